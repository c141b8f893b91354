"""TEMPORARY stand-in until the pipeline declaration lands."""

from .flows import Table


def table_name(number: int) -> str:
    try:
        return Table(number).name.lower()
    except ValueError:
        return f"table{number}"
