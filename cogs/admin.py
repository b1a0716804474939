"""Owner commands. Global sync is an explicit act of the owner, never a side effect of a start."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from discord.ext import commands

if TYPE_CHECKING:
    from bot.client.app import SDBot


class Admin(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @commands.command(name="sync")
    @commands.is_owner()
    @commands.guild_only()
    async def sync(
        self,
        ctx: commands.Context[commands.Bot],
        scope: Literal["global", "here", "clear"] = "global",
    ) -> None:
        """`@bot sync` publishes the slash commands everywhere (Discord may take a while);
        `@bot sync here` copies them to this server at once; `@bot sync clear` removes
        this server's copies."""
        guild = ctx.guild
        assert guild is not None
        tree = self.bot.tree
        if scope == "global":
            synced = await tree.sync()
            where = "globally"
        elif scope == "here":
            tree.copy_global_to(guild=guild)
            synced = await tree.sync(guild=guild)
            where = f"to {guild.name}"
        else:
            tree.clear_commands(guild=guild)
            synced = await tree.sync(guild=guild)
            where = f"to {guild.name} (cleared)"
        await ctx.reply(f"Synced {len(synced)} command(s) {where}.", mention_author=False)

    async def cog_command_error(self, ctx: commands.Context[Any], error: Exception) -> None:
        if isinstance(error, commands.NotOwner):
            await ctx.reply("Only the bot's owner can do that.", mention_author=False)
        elif isinstance(error, commands.UserInputError | commands.NoPrivateMessage):
            await ctx.reply(
                f"{error} Usage: `@bot sync [global|here|clear]`.", mention_author=False
            )
        else:
            raise error


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Admin(bot))
