"""StyleGAN2 layers and networks (EG3D / Portrait4D variant), pure torch. Import the sub-modules directly."""
