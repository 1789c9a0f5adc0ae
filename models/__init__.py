"""Pure PyTorch models of the DiffuGAN pack, one file per stage. Nothing here imports ComfyUI."""
