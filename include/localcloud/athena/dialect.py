"""Athena's SQL is Trino's: a query is parsed as Trino SQL (sqlglot) and transpiled to the DuckDB
SQL the local cloud runs. sqlglot's parser is lenient, and reads many of DuckDB's extensions even in
the Trino dialect (then writes them out as Trino SQL), so the constructs Trino's grammar lacks are
refused here by name, as Athena refuses them when the query is submitted:
"line 1:10: mismatched input 'EXCLUDE'. ...". Only constructs Trino surely refuses are listed; a
query refused here would be refused by Athena too."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

TRINO = sqlglot.Dialect.get_or_raise("trino")
QUERY_STARTS = {TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN, TokenType.VALUES, TokenType.TABLE}
# Tokens after which an expression starts: a "[" or "{" there opens a DuckDB list or struct literal,
# where elsewhere "[" is a subscript (a[1], m['k']) or ARRAY[...].
EXPRESSION_STARTS = {
    TokenType.COMMA, TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.SELECT, TokenType.WHERE, TokenType.HAVING,
    TokenType.ON, TokenType.AND, TokenType.OR, TokenType.NOT, TokenType.CASE, TokenType.WHEN, TokenType.THEN,
    TokenType.ELSE, TokenType.IN, TokenType.EQ, TokenType.NEQ, TokenType.LT, TokenType.LTE, TokenType.GT,
    TokenType.GTE, TokenType.PLUS, TokenType.DASH, TokenType.SLASH, TokenType.DPIPE, TokenType.BETWEEN,
    TokenType.LIKE, TokenType.DISTINCT,
}
# Tokens before "(" where a subquery, not a function's arguments, follows: "(FROM t" is DuckDB's
# FROM-first query there (trim(FROM x) is Trino's).
SUBQUERY_OPENERS = {
    None, TokenType.ALIAS, TokenType.FROM, TokenType.JOIN, TokenType.IN, TokenType.EXISTS, TokenType.L_PAREN,
    TokenType.COMMA, TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT,
}


class NotTrinoSql(Exception):
    """A query Athena's parser refuses; the message is Athena's kind: 'line L:C: mismatched input ...'."""


def to_duckdb(sql: str) -> list[str]:
    """The DuckDB SQL of each statement of a Trino query; NotTrinoSql when Trino would refuse it."""
    try:
        tokens = TRINO.tokenize(sql)
    except TokenError:
        raise NotTrinoSql("line 1:1: token recognition error: the query has an unterminated string, "
                          "quoted identifier or comment") from None
    if not tokens:
        raise NotTrinoSql("line 1:1: mismatched input '<EOF>'. Expecting a query")
    _check_tokens(sql, tokens)
    try:
        trees = [tree for tree in sqlglot.parse(sql, dialect=TRINO) if tree is not None]
    except ParseError as error:
        raise _parse_error(sql, tokens, error) from None
    for tree in trees:
        _check_tree(sql, tokens, tree)
    return [tree.sql(dialect="duckdb") for tree in trees]


def _at(sql: str, token: Token) -> str:
    """'line L:C: mismatched input 'text'', as Trino places a token (C counts from 1)."""
    column = token.start - sql.rfind("\n", 0, token.start)
    return f"line {token.line}:{column}: mismatched input '{sql[token.start:token.end + 1]}'"


def _refused(sql: str, token: Token, construct: str) -> NotTrinoSql:
    return NotTrinoSql(f"{_at(sql, token)}. {construct} is DuckDB SQL, not Athena's (Trino)")


def _check_tokens(sql: str, tokens: list[Token]) -> None:
    limits: set[int] = set()  # paren depths at which a LIMIT came
    depth = 0
    for index, token in enumerate(tokens):
        before = tokens[index - 1].token_type if index else None
        after = tokens[index + 1] if index + 1 < len(tokens) else None
        kind = token.token_type
        if index == 0 and kind not in QUERY_STARTS:
            if kind == TokenType.FROM:
                raise _refused(sql, token, "A query starting with FROM (FROM t SELECT ...)")
            raise NotTrinoSql(f"line {token.line}:1: mismatched input '{token.text}'. Expecting a query")
        if kind == TokenType.FROM and before == TokenType.L_PAREN:
            opener = tokens[index - 2].token_type if index >= 2 else None
            if opener in SUBQUERY_OPENERS:
                raise _refused(sql, token, "A subquery starting with FROM (FROM t SELECT ...)")
        elif kind == TokenType.DCOLON:
            raise _refused(sql, token, "The :: cast (x::type; Trino writes CAST(x AS type))")
        elif kind == TokenType.EQ and token.text == "==":
            raise _refused(sql, token, "The == operator (Trino compares with =)")
        elif kind == TokenType.L_BRACKET and before in EXPRESSION_STARTS:
            raise _refused(sql, token, "A list literal [a, b] (Trino writes ARRAY[a, b])")
        elif kind == TokenType.L_BRACE and before in EXPRESSION_STARTS:
            raise _refused(sql, token, "A struct literal {'k': v} (Trino writes CAST(ROW(v) AS ROW(k type)))")
        elif kind == TokenType.INTERVAL and after is not None and after.token_type == TokenType.NUMBER:
            raise _refused(sql, after, "An interval of a bare number (INTERVAL 1 DAY; Trino writes INTERVAL '1' DAY)")
        elif kind == TokenType.COMMA and after is not None and after.token_type in (TokenType.FROM, TokenType.R_PAREN):
            raise _refused(sql, after, "A trailing comma in a list")
        elif kind == TokenType.USING and after is not None and after.text.upper() == "SAMPLE":
            raise _refused(sql, token, "USING SAMPLE (Trino samples with TABLESAMPLE BERNOULLI (p))")
        elif kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            limits.discard(depth)
            depth -= 1
        elif kind == TokenType.LIMIT:
            limits.add(depth)
        elif kind == TokenType.OFFSET and depth in limits:
            raise _refused(sql, token, "OFFSET after LIMIT (Trino takes OFFSET n before LIMIT m)")


def _first(tokens: list[Token], *words: str) -> Token:
    return next((token for token in tokens if token.text.upper() in words), tokens[0])


def _check_tree(sql: str, tokens: list[Token], tree: exp.Expr) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Star) and (node.args.get("except_") or node.args.get("replace")
                                           or node.args.get("rename")):
            raise _refused(sql, _first(tokens, "EXCLUDE", "EXCEPT", "REPLACE", "RENAME"),
                           "SELECT * EXCLUDE / REPLACE (Trino names the columns it selects)")
        if isinstance(node, exp.ILike):
            raise _refused(sql, _first(tokens, "ILIKE"), "ILIKE (Trino writes lower(x) LIKE lower(pattern))")
        if isinstance(node, exp.Join) and (node.args.get("kind") in ("ANTI", "SEMI")
                                           or node.args.get("method") == "ASOF"):
            word = node.args.get("kind") or node.args.get("method")
            raise _refused(sql, _first(tokens, word), f"{word} JOIN")
        if isinstance(node, exp.Distinct) and node.args.get("on"):
            raise _refused(sql, _first(tokens, "ON"), "SELECT DISTINCT ON (...)")
        if isinstance(node, exp.SetOperation) and node.args.get("by_name"):
            raise _refused(sql, _first(tokens, "BY"), "UNION / EXCEPT / INTERSECT BY NAME")
        if isinstance(node, exp.Pivot):
            raise _refused(sql, _first(tokens, "PIVOT", "UNPIVOT"), "PIVOT / UNPIVOT")
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Func) and not (
            isinstance(node.this, exp.Anonymous) and node.this.name.upper() == "TABLE"
        ):
            name = node.this.sql_name() if not isinstance(node.this, exp.Anonymous) else node.this.name
            call = _first(tokens, name.upper())
            raise _refused(sql, call, f"A table function called in FROM ({name}(...); Trino writes TABLE({name}(...)))")


def _parse_error(sql: str, tokens: list[Token], error: ParseError) -> NotTrinoSql:
    """Athena's message for what sqlglot could not parse, at the token it stopped at."""
    details = error.errors[0] if error.errors else {}
    line, end = details.get("line") or 1, details.get("col") or 1
    found = next((i for i, t in enumerate(tokens) if t.line == line and t.col == end), None)
    if found is None:
        return NotTrinoSql(f"line {line}:{end}: mismatched input. {details.get('description', error)}")
    token = tokens[found]
    previous = tokens[found - 1] if found else None
    if previous is not None and previous.text.upper() == "QUALIFY":
        return _refused(sql, previous, "QUALIFY (Trino filters on a window function in an outer query)")
    if token.text == "`":
        opening = _first(tokens, "`")
        line, column = opening.line, opening.start - sql.rfind("\n", 0, opening.start)
        return NotTrinoSql(f"line {line}:{column}: backquoted identifiers are not supported; "
                           "use double quotes to quote identifiers")
    return NotTrinoSql(_at(sql, token))
