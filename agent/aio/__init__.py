"""Asyncio building blocks shared by the data path and the controller: task groups that re-raise the
failure that caused them (``taskgroups``), thread offload that never orphans a thread (``threads``), and
waiting on a wake event with a deadline (``waiting``). Nothing here knows Kubernetes or storage."""
