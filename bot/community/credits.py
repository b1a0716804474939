"""Credits as members and admins use them: balances, history, grants, the books' check."""

from __future__ import annotations

from dataclasses import dataclass

from data.credits import Account, CreditPolicy, CreditRepository, LedgerEntry

# Larger amounts are typing mistakes, not generosity; SQLite would take them, members would not.
MAX_AMOUNT = 1_000_000


class CreditsRefused(Exception):
    """An admin request that makes no sense; the message says why."""


@dataclass(frozen=True, slots=True)
class BalanceReport:
    account: Account
    next_topup: float  # unix time of the next top-up
    topup_amount: int
    topup_ceiling: int
    standard_price: int


class CreditService:
    def __init__(self, credits: CreditRepository, standard_price: int) -> None:
        self.credits = credits
        self.standard_price = standard_price

    @property
    def policy(self) -> CreditPolicy:
        return self.credits.policy

    async def balance(self, user_id: int, policy: CreditPolicy | None = None) -> BalanceReport:
        """With `policy`, the top-up of the server asked from (the bot's by default)."""
        policy = policy or self.policy
        account = await self.credits.account(user_id, policy)
        return BalanceReport(
            account,
            account.next_topup(policy),
            policy.topup_amount,
            policy.topup_ceiling,
            self.standard_price,
        )

    async def history(
        self, user_id: int, limit: int = 10, policy: CreditPolicy | None = None
    ) -> list[LedgerEntry]:
        await self.credits.account(user_id, policy)
        return await self.credits.history(user_id, limit)

    async def grant(
        self, user_id: int, amount: int, *, is_bot: bool, actor_id: int | None, reason: str
    ) -> Account:
        self._check_member(is_bot)
        if amount <= 0:
            raise CreditsRefused("Grant a positive number of credits; use set to lower a balance.")
        if amount > MAX_AMOUNT:
            raise CreditsRefused(f"{amount:,} credits is more than the limit of {MAX_AMOUNT:,}.")
        return await self.credits.grant(user_id, amount, actor_id=actor_id, reason=reason)

    async def set_balance(
        self, user_id: int, balance: int, *, is_bot: bool, actor_id: int | None, reason: str
    ) -> Account:
        self._check_member(is_bot)
        if balance < 0:
            raise CreditsRefused("A balance cannot be negative.")
        if balance > MAX_AMOUNT:
            raise CreditsRefused(f"{balance:,} credits is more than the limit of {MAX_AMOUNT:,}.")
        return await self.credits.set_balance(user_id, balance, actor_id=actor_id, reason=reason)

    async def top(self, limit: int = 10) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return await self.credits.top(limit)

    async def check(self) -> list[str]:
        return await self.credits.check()

    @staticmethod
    def _check_member(is_bot: bool) -> None:
        if is_bot:
            raise CreditsRefused("Bots do not use credits.")
