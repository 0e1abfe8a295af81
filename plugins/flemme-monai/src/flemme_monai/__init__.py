"""flemme-monai: MONAI's own segmentation networks as flemme architectures that take no encoder."""
