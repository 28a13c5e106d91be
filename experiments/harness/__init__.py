"""The one training harness's parts: config, runtime, data order, evaluation, optimizer,
checkpoints, tracking, artifacts."""
