"""The executor's memory of finished tasks, bounded: the newest ``size`` by their last run."""

from __future__ import annotations

from collections import OrderedDict


class History:
    """Task ids in the order they last finished. :meth:`finished` returns those that fall out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: OrderedDict[int, None] = OrderedDict()

    def finished(self, tid: int) -> list[int]:
        """``tid`` finished (again, for a retry: it moves to the newest end); returns the ids
        forgotten to stay within ``size``, oldest first."""
        self._order[tid] = None
        self._order.move_to_end(tid)
        forgotten = []
        while len(self._order) > self.size:
            forgotten.append(self._order.popitem(last=False)[0])
        return forgotten

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, tid: object) -> bool:
        return tid in self._order
