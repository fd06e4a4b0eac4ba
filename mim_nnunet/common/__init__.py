"""What every part of mim-nnunet shares: atomic writes, one-line errors, content digests, the
environment (nnU-Net's folders, our trainers folder) and where runs put their files."""
