"""The export contract on both sides: how a pre-trained encoder is written (safetensors + JSON adaptation
record, key names), imported from the authors' release, found by a fine-tuning trainer and transferred
into a segmentation network with the pre-flight check."""
