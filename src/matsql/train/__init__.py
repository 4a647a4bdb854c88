"""Training: SFT and ORPO recipes on TRL, SFT data builders, and the rule-based validator teacher.

Modules: ``config`` (recipes), ``data`` (sources, mixtures, hashes), ``encoding`` (chat
tokenisation), ``losses`` (safe ORPO log-odds), ``sft`` / ``orpo`` (TRL trainers), ``runner``
(one run -> run folder), ``modeling`` (init_from, LoRA, reloading), ``teacher``, ``sqlparts``,
``sft_data``, ``commands`` (CLI). Heavy dependencies (torch, TRL) load only where needed.
"""
