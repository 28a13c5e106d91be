"""The GPU check: `make gpu-bundle` packs `.gpu/`, and `bash .gpu/run.sh` runs on a lent H200."""
