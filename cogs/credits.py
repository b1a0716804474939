"""/balance, /credits, and `balance`/`help` by DM."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.community.credits import MAX_AMOUNT, BalanceReport, CreditsRefused
from bot.generation.options import DreamOptions
from cogs.ui.context import requester_of
from cogs.ui.options import SizeTransformer, model_autocomplete
from data.credits import CreditPolicy, LedgerEntry
from engine.api.params import MAX_COUNT, MAX_STEPS

if TYPE_CHECKING:
    from bot.client.app import SDBot

DM_HELP = (
    "What works here:\n"
    "• `balance`: your credits, your next free top-up and the price of an image\n"
    "• `help`: this list\n"
    "Slash commands that work in DMs: `/balance`, `/credits history`."
)


def balance_text(report: BalanceReport) -> str:
    account = report.account
    lines = [f"You have **{account.balance}** credits."]
    if report.topup_amount and account.balance < report.topup_ceiling:
        lines.append(
            f"Next free top-up: +{report.topup_amount} (up to {report.topup_ceiling}) "
            f"<t:{int(report.next_topup)}:R>."
        )
    elif report.topup_amount:
        lines.append(f"Free top-ups resume when you are below {report.topup_ceiling}.")
    lines.append(f"A standard image (512x512, 20 steps) costs {report.standard_price}.")
    return "\n".join(lines)


def history_line(entry: LedgerEntry) -> str:
    what = entry.kind.value + (f" job {entry.job_id}" if entry.job_id else "")
    if entry.reason:
        what += f" ({entry.reason})"
    return f"<t:{int(entry.created_at)}:d> `{entry.delta:+d}` {what}"


class Credits(commands.Cog):
    credits_group = app_commands.Group(
        name="credits",
        description="Credits: your history; grants and balances for admins",
        allowed_contexts=app_commands.AppCommandContext(
            guild=True, dm_channel=True, private_channel=True
        ),
    )

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="balance", description="Your credits and your next free top-up")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def balance(self, interaction: discord.Interaction) -> None:
        report = await self.bot.credits.balance(
            interaction.user.id, await self._credit_policy(interaction.guild_id)
        )
        await interaction.response.send_message(balance_text(report), ephemeral=True)

    async def _credit_policy(self, guild_id: int | None) -> CreditPolicy:
        """The top-up of the server asked from (credits are one balance; the top-up follows
        where the member uses the bot)."""
        community = self.bot.community
        return community.credit_policy(await community.guilds.policy(guild_id))

    @app_commands.command(name="price", description="What a /dream would cost, before you run it")
    @app_commands.describe(size="WIDTHxHEIGHT", steps="Denoising steps", count="How many images")
    @app_commands.autocomplete(model=model_autocomplete)
    async def price(
        self,
        interaction: discord.Interaction,
        size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        model: str | None = None,
    ) -> None:
        dreams = self.bot.dreams
        params = dreams.build_params(
            DreamOptions("price", size=size, steps=steps, count=count, model=model)
        )
        # The server's price and the member's roles, as a job here would be charged.
        requester = requester_of(interaction.user, interaction.channel)
        cost = await self.bot.community.quote(
            params, guild_id=interaction.guild_id, requester=requester
        )
        report = await self.bot.credits.balance(
            interaction.user.id, await self._credit_policy(interaction.guild_id)
        )
        await interaction.response.send_message(
            f"{params.count}× {params.size}, {params.steps} steps on {params.model} costs "
            f"{cost} credit{'s' if cost != 1 else ''}; you have {report.account.balance}.",
            ephemeral=True,
        )

    @credits_group.command(name="history", description="Your last credit changes")
    async def history(self, interaction: discord.Interaction) -> None:
        entries = await self.bot.credits.history(
            interaction.user.id, policy=await self._credit_policy(interaction.guild_id)
        )
        text = "\n".join(history_line(entry) for entry in entries) or "No credit changes yet."
        await interaction.response.send_message(text, ephemeral=True)

    @credits_group.command(name="grant", description="Admins: give a member credits")
    @app_commands.guild_only()
    async def grant(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        amount: app_commands.Range[int, 1, MAX_AMOUNT],
        reason: app_commands.Range[str, 1, 200] = "granted by an admin",
    ) -> None:
        if not await self._admin(interaction):
            return
        try:
            account = await self.bot.credits.grant(
                member.id, amount, is_bot=member.bot, actor_id=interaction.user.id, reason=reason
            )
        except CreditsRefused as refused:
            await interaction.response.send_message(str(refused), ephemeral=True)
            return
        await interaction.response.send_message(
            f"Gave {member.mention} {amount} credits ({reason}); they now have {account.balance}.",
            ephemeral=True,
        )

    @credits_group.command(name="set", description="Admins: set a member's balance")
    @app_commands.guild_only()
    async def set_balance(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        balance: app_commands.Range[int, 0, MAX_AMOUNT],
        reason: app_commands.Range[str, 1, 200] = "set by an admin",
    ) -> None:
        if not await self._admin(interaction):
            return
        try:
            account = await self.bot.credits.set_balance(
                member.id, balance, is_bot=member.bot, actor_id=interaction.user.id, reason=reason
            )
        except CreditsRefused as refused:
            await interaction.response.send_message(str(refused), ephemeral=True)
            return
        await interaction.response.send_message(
            f"{member.mention} now has {account.balance} credits.", ephemeral=True
        )

    @credits_group.command(name="top", description="Admins: largest balances and spenders")
    @app_commands.guild_only()
    async def top(self, interaction: discord.Interaction) -> None:
        if not await self._admin(interaction):
            return
        balances, spenders = await self.bot.credits.top()
        richest = "\n".join(f"<@{user}> {amount}" for user, amount in balances) or "nobody yet"
        spent = "\n".join(f"<@{user}> {amount}" for user, amount in spenders) or "nobody yet"
        embed = discord.Embed(title="Credits")
        embed.add_field(name="Largest balances", value=richest)
        embed.add_field(name="Largest spenders", value=spent)
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    async def _admin(self, interaction: discord.Interaction) -> bool:
        if self.bot.is_admin(interaction.user):
            return True
        await interaction.response.send_message(
            "Only admins (Manage Server) can do that.", ephemeral=True
        )
        return False

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """DMs: message text is readable there without the message-content intent."""
        if message.guild is not None or message.author.bot:
            return
        word = message.content.strip().lower()
        if word == "balance":
            await message.channel.send(
                balance_text(await self.bot.credits.balance(message.author.id))
            )
        elif word in ("help", "?"):
            await message.channel.send(DM_HELP)
        elif word:
            await message.channel.send("I did not understand that. " + DM_HELP)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Credits(bot))
