"""What a run trains on: backbones and data sets."""
