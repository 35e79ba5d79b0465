"""The plumbing every batch job shares: atomic files, disk space, locks, shards and worker processes.

Nothing here knows a pipeline: it raises only OSError and ValueError, which each pipeline turns
into its own one-line error.
"""
from src.jobs.disk import DISK_FULL, disk_full_message, free_bytes, gigabytes, is_disk_full
from src.jobs.files import (PARTIAL_SUFFIX, atomic_write, check_writable, prepare_folder, reason, save_array_atomic,
                            temporary_name, write_text_atomic)
from src.jobs.lock import FolderLock, LockError, folder_mutex
from src.jobs.names import inside, path_component
from src.jobs.shards import parse_shard, shard_from_env, take_shard
from src.jobs.workers import die_with_parent, set_threads, worker_init
from src.jobs.walk import walk_files
