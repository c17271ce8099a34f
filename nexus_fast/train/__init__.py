"""Training: schedules (the seed's cosine_schedule_with_warmup and momentum schedules)."""

from .schedules import cosine_schedule_with_warmup, momentum_schedule

__all__ = ["cosine_schedule_with_warmup", "momentum_schedule"]
