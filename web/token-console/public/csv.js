// CSV cells written by the page, made safe for spreadsheets as the server's
// export does (console/export.rs `defuse`): a text cell that a spreadsheet
// would read as a formula gets a leading apostrophe, and cells with commas,
// quotes or line breaks are quoted.

const FORMULA_START = ['=', '+', '-', '@', '\t', '\r'];
const SPLIT_AT = [',', ';', '\t', '\r', '\n', '|'];

/** One CSV cell: numbers as they are, text defused and quoted when needed. */
export function defuse(value) {
  if (typeof value === 'number') return String(value);
  const text = String(value ?? '');
  let out = '';
  let partStart = true;
  for (const c of text) {
    if (partStart) {
      if (FORMULA_START.includes(c)) {
        out += "'";
        partStart = false;
      } else if (c !== ' ' && c !== '"' && !SPLIT_AT.includes(c)) {
        partStart = false;
      }
    }
    out += c;
    if (SPLIT_AT.includes(c)) partStart = true;
  }
  return /[",\r\n]/.test(out) ? `"${out.replace(/"/g, '""')}"` : out;
}
