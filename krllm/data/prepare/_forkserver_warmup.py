"""Imported once by the forkserver (see `krllm.data.prepare.job.WORKER_PRELOAD`), never by users.

Every datatrove step checks its dependencies when it is created or unpickled, which parses package
metadata with importlib.metadata: ~0.3 s in each fresh process, i.e. in every worker of every
stage. Doing it here once fills datatrove's caches, and workers forked from the server inherit them.
"""

from itertools import chain

from datatrove.utils._import_utils import check_required_dependencies

from krllm.data.prepare.finalize import FinalizeShards
from krllm.data.prepare.readers import CleanReader, InputReader
from krllm.data.prepare.steps import (CleanWriter, HangulRatioFilter, KoreanCleaner, KoreanMinhashSignature, LengthFilter,
                              SplitShardWriter)


def warm_up() -> None:
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter

    for cls in (InputReader, CleanReader, KoreanCleaner, LengthFilter, HangulRatioFilter, CleanWriter,
                ExactDedupSignature, ExactFindDedups, ExactDedupFilter, KoreanMinhashSignature, MinhashDedupBuckets,
                MinhashDedupCluster, MinhashDedupFilter, SplitShardWriter, FinalizeShards):
        deps = list(chain.from_iterable(getattr(t, "_requires_dependencies", []) for t in cls.mro()))
        if deps:
            check_required_dependencies(cls.__name__, deps)
    check_required_dependencies("xxhash Hashing", ["xxhash"])


warm_up()
