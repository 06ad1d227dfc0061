"""flantune: multi-task text-to-text fine-tuning for FLAN-T5.

Tasks are data (YAML files registered by name), one Seq2SeqTrainer engine trains full or LoRA on a
task or a mixture, and reports compare base and fine-tuned models with confidence intervals.
"""

__version__ = "0.1.0"
