"""The student: SFT examples, tokenisation, the LightningModule and DataModule, training strategies."""
