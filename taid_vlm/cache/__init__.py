"""Teacher top-k cache: run a big teacher once, train many students from what it said."""

from taid_vlm.cache.reader import CacheMismatchError, TeacherCache, dense_logprobs
from taid_vlm.cache.writer import cache_teacher, topk_rows

__all__ = ["TeacherCache", "CacheMismatchError", "cache_teacher", "dense_logprobs", "topk_rows"]
