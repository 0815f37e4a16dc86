"""torchrun: data parallel over prompts and Ulysses sequence parallel inside the model."""
