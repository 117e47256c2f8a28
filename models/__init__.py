"""The network, its LightningModule, the tensor data module and the packaged inference model."""
