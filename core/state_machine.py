"""Explicit state machines for models: allowed transitions, checked and applied atomically."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from django.db import models


class InvalidTransition(Exception):
    """A state change that the model's state machine does not allow."""


class StateMachineModel(models.Model):
    """A model with a ``state`` field that only ever changes through ``_move``.

    ``TRANSITIONS`` maps each state to the states it may go to. ``_move`` refuses anything
    else, and changes the row with ``UPDATE … WHERE state = <current>``, so of two processes
    racing to move the same row, exactly one wins and the other gets ``InvalidTransition``.
    """

    TRANSITIONS: ClassVar[dict[str, set[str]]] = {}
    if TYPE_CHECKING:
        state: str  # each subclass declares the field, with its choices

    class Meta:
        abstract = True

    def can_move_to(self, new_state: str) -> bool:
        return new_state in self.TRANSITIONS[self.state]

    def _move(self, new_state: str, **fields: Any) -> None:
        name = f"{self._meta.verbose_name} {self.pk}"
        if not self.can_move_to(new_state):
            raise InvalidTransition(f"{name} cannot go from {self.state} to {new_state}")
        # ``state`` is each subclass's field, which the type checker cannot see on this base.
        current: dict[str, Any] = {"state": self.state}
        updated = type(self)._default_manager.filter(pk=self.pk, **current).update(**{"state": new_state}, **fields)
        if updated != 1:
            raise InvalidTransition(f"{name} changed state concurrently")
        self.state = new_state
        for field, value in fields.items():
            setattr(self, field, value)
