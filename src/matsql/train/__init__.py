"""Training only: SFT and ORPO recipes on TRL (the data comes from :mod:`matsql.labels`).

Modules: ``config`` (recipes), ``data`` (sources, mixtures, hashes), ``encoding`` (chat
tokenisation), ``losses`` (safe ORPO log-odds), ``sft`` / ``orpo`` (TRL trainers), ``runner``
(one run -> run folder), ``modeling`` (init_from, LoRA, reloading), ``checkpoints`` (pick a
validator checkpoint), ``commands`` (CLI). Heavy dependencies (torch, TRL) load only where needed.
"""
