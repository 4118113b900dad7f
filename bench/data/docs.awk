# docs.awk — turns a stream of source units into documents, one per line,
# each tagged with the part it belongs to. Run under LC_ALL=C (byte
# semantics: lengths are UTF-8 bytes, and a chunk is never cut inside a
# multi-byte character).
#
# Input (what the extractors of make_corpora.sh print): units separated by a
# line holding only a form feed (\f); inside a unit, paragraphs separated by
# blank lines. A unit is what is held out or not as a whole (a man page, a
# chapter of the Bible, a fortune, a numbered section of a manual), so no
# held-out document shares a unit with a training one.
#
# Output: "PART<TAB>DOCUMENT" lines, PART one of heldout, base, train.
#   - whitespace: control characters and no-break spaces become spaces, runs of spaces collapse
#     to one, no leading or trailing space;
#   - documents: a unit's paragraphs, in order, joined with one space into
#     documents of at most maxdoc bytes (a longer paragraph is cut at its
#     last space before the limit, or at a character boundary when it has
#     none); documents under mindoc bytes are dropped;
#   - part (the split): from a hash of the unit's normalised text (so it depends on the
#     content, not on where the unit sits): hash mod 100 below heldout_pct is
#     held out, below heldout_pct + base_pct goes to the base model's share,
#     the rest to the universities' training share;
#   - duplicates: a document equal to one already written (in this domain or
#     in an earlier one: the file `seen`, one document per line) is dropped.
#
# Variables: maxdoc, mindoc, heldout_pct, base_pct, seen (a path; may be
# empty or missing).
BEGIN {
    RS = "\n"
    for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i
    if (seen != "")
        while ((getline line < seen) > 0) dup[line] = 1
    nu = 0; npar = 0; cur = ""
}

function flush_par() {
    if (cur != "") par[++npar] = cur
    cur = ""
}

# Polynomial hash of the first 4096 bytes, mod the Mersenne prime 2^31 - 1:
# products stay below 2^40, exact in awk's doubles.
function unit_hash(s, n, h, i) {
    n = length(s); if (n > 4096) n = 4096
    h = 0
    for (i = 1; i <= n; i++) h = (h * 257 + ord[substr(s, i, 1)]) % 2147483647
    return h
}

# The cut point for a piece longer than maxdoc: the last space at or before
# maxdoc + 1, else the last character boundary at or before maxdoc + 1 (a
# byte that is not a UTF-8 continuation byte 0x80..0xBF).
function cut_at(s, i) {
    for (i = maxdoc + 1; i > maxdoc / 2; i--)
        if (substr(s, i, 1) == " ") return i
    for (i = maxdoc + 1; i > 1; i--)
        if (ord[substr(s, i, 1)] < 128 || ord[substr(s, i, 1)] >= 192) return i
    return maxdoc + 1
}

function emit(part, d) {
    if (length(d) < mindoc || (d in dup)) return
    dup[d] = 1
    print part "\t" d
}

function flush_unit(i, all, h, part, doc, p, c) {
    flush_par()
    if (npar == 0) return
    all = par[1]
    for (i = 2; i <= npar; i++) all = all " " par[i]
    h = unit_hash(all) % 100
    part = h < heldout_pct ? "heldout" : (h < heldout_pct + base_pct ? "base" : "train")
    doc = ""
    for (i = 1; i <= npar; i++) {
        p = par[i]
        if (doc != "" && length(doc) + 1 + length(p) <= maxdoc) { doc = doc " " p; continue }
        if (doc != "") emit(part, doc)
        doc = p
        while (length(doc) > maxdoc) {
            c = cut_at(doc)
            emit(part, substr(doc, 1, c - 1))
            doc = substr(doc, c); sub(/^ +/, "", doc)
        }
    }
    if (doc != "") emit(part, doc)
    npar = 0
}

$0 == "\f" { flush_unit(); next }
{
    gsub(/[\001-\037\177]/, " ")
    gsub(/\302\240/, " ") # U+00A0 no-break space
    gsub(/  +/, " ")
    sub(/^ /, ""); sub(/ $/, "")
    if ($0 == "") { flush_par(); next }
    cur = cur == "" ? $0 : cur " " $0
}
END { flush_unit() }
