"""Fine-tune a CodeGen model on a repopilot dataset (HF Trainer + DeepSpeed, or LoRA)."""
