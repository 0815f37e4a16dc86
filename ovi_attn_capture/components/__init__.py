"""Text encoder, video VAE, audio decoder: loading the real, tiny and toy ones."""
