"""Add one receipt as a row of an .xlsx expenses sheet, and print the totals per currency.

Usage: python3 add_receipt.py --file expenses.xlsx --date 2026-03-14 --merchant "Shop"
           --amount 23.80 --currency EUR [--category Meals] [--note "..."]
Exit 0 when the row was added, 1 when it was already there, 2 on bad input.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from openpyxl import Workbook, load_workbook

SHEET = "Receipts"
HEADER = ("Date", "Merchant", "Category", "Amount", "Currency", "Note")
CATEGORIES = ("Travel", "Meals", "Office", "Software", "Other")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Add a receipt to an expenses sheet.")
    parser.add_argument("--file", required=True, type=Path)
    parser.add_argument("--date", required=True, type=datetime.date.fromisoformat)
    parser.add_argument("--merchant", required=True)
    parser.add_argument("--amount", required=True)
    parser.add_argument("--currency", required=True)
    parser.add_argument("--category", default="Other", choices=CATEGORIES)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    try:
        args.amount = Decimal(args.amount)
    except InvalidOperation:
        parser.error(f"--amount {args.amount!r} is not a number such as 12.50")
    if not (len(args.currency) == 3 and args.currency.isalpha()):
        parser.error(f"--currency {args.currency!r} is not a three-letter code such as EUR")
    args.currency = args.currency.upper()
    return args


def open_sheet(path: Path):  # type: ignore[no-untyped-def]
    if path.exists():
        book = load_workbook(path)
        if SHEET in book.sheetnames:
            return book, book[SHEET]
        sheet = book.create_sheet(SHEET)
    else:
        book = Workbook()
        sheet = book.active
        sheet.title = SHEET
    sheet.append(HEADER)
    return book, sheet


def main(argv: list[str]) -> int:
    args = parse(argv)
    book, sheet = open_sheet(args.file)
    for row in sheet.iter_rows(min_row=2, values_only=True):
        date = row[0].date() if isinstance(row[0], datetime.datetime) else row[0]
        if (date, row[1], Decimal(str(row[3]))) == (args.date, args.merchant, args.amount):
            print(f"already there: {args.date} {args.merchant} {args.amount}")
            return 1
    sheet.append((args.date, args.merchant, args.category, float(args.amount), args.currency,
                  args.note))
    sheet.cell(row=sheet.max_row, column=1).number_format = "yyyy-mm-dd"
    sheet.cell(row=sheet.max_row, column=4).number_format = "#,##0.00"
    book.save(args.file)
    totals: dict[str, Decimal] = {}
    for row in sheet.iter_rows(min_row=2, values_only=True):
        totals[row[4]] = totals.get(row[4], Decimal(0)) + Decimal(str(row[3]))
    shown = ", ".join(f"{amount:.2f} {currency}" for currency, amount in sorted(totals.items()))
    print(f"added row {sheet.max_row}: {args.date} {args.merchant} {args.amount:.2f} "
          f"{args.currency}; totals: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
