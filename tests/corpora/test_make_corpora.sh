#!/usr/bin/env bash
# Tests bench/data/make_corpora.sh (docs/corpora.md) on a fake package tree:
# a dpkg database (status, info/<pkg>.list) and the packages' files under a
# temporary root, a fake `bible` program on PATH; no apt, no network. Man
# pages are rendered by the real man-db and groff.
#   test_make_corpora.sh MAKE_CORPORA_SH
# Checks: every domain gets train/base/heldout files of clean one-line UTF-8
# documents (no markup, no control characters, normalised spaces, at most
# 2000 bytes, no duplicates anywhere, held-out units apart from training
# ones); excluded files stay out; MANIFEST matches the files; the output is
# deterministic; a missing package, an empty domain and an existing OUT are
# refused with a message, leaving nothing behind.
set -euo pipefail
export LC_ALL=C
script=${1:?usage: test_make_corpora.sh MAKE_CORPORA_SH}
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
passed=0
fail() { echo "FAIL: $*" >&2; echo "$passed passed, 1 failed"; exit 1; }
ok() { passed=$((passed + 1)); }
for t in man groff col dpkg-query iconv gzip; do
  command -v $t >/dev/null || fail "'$t' is not installed (scripts/install-deps.sh installs man-db, groff-base, bsdextrautils)"
done

# ---- a fake root -------------------------------------------------------------------
root=$work/root
db=$root/var/lib/dpkg
mkdir -p "$db/info" "$work/bin"
: >"$db/status"
# add PKG FILE...: registers PKG as installed, owning the files.
add() {
  local p=$1
  shift
  printf 'Package: %s\nStatus: install ok installed\nVersion: 1.0-test\nArchitecture: all\nMaintainer: test\nDescription: fake\n\n' "$p" >>"$db/status"
  { echo /.; for f in "$@"; do echo "$f"; done; } >"$db/info/$p.list"
}
put() { mkdir -p "$(dirname "$root$1")"; cat >"$root$1"; }  # put PATH < content
putgz() { mkdir -p "$(dirname "$root$1")"; gzip -n -c >"$root$1"; }

# Words to make units differ (awk's rand with a fixed seed is the same on every run).
words='awk -v seed=SEED -v n=N -v lang=LANG -f '"$work"'/words.awk'
cat >"$work/words.awk" <<'EOF'
BEGIN { srand(seed); split(lang == "de" ? "über Größe schön Straße Ärger Öl Tür grün weiß Maß" \
                                       : "system kernel file process network memory signal user", w, " ")
        for (i = 0; i < n; i++) printf "%s%s", (i ? " " : ""), w[1 + int(rand() * length(w))] int(rand() * 1000)
        printf "\n" }
EOF
gen() { awk -v seed="$1" -v n="$2" -v lang="$3" -f "$work/words.awk"; }

# fortunes: 50 in "science" (one with a Latin-1 byte), an excluded "art" file,
# a .dat index; fortunes-min: 10 more, one a duplicate of a science fortune.
{ for i in $(seq 1 50); do echo "Science fortune $i: $(gen $i 12 en)"; echo "  -- Someone $i"; echo %; done
  printf 'Caf\351 au lait with a stray Latin-1 byte\n%%\n'; } | put /usr/share/games/fortunes/science
printf 'ARTMARKER |_| ascii art\n%%\n' | put /usr/share/games/fortunes/art
printf '\000\001binary' | put /usr/share/games/fortunes/science.dat
{ for i in $(seq 1 10); do echo "Min fortune $i: $(gen $((100 + i)) 10 en)"; echo %; done
  echo "Science fortune 1: $(gen 1 12 en)"; echo "  -- Someone 1"; echo %; } | put /usr/share/games/fortunes/fortunes
add fortunes /usr/share/games/fortunes/science /usr/share/games/fortunes/science.dat /usr/share/games/fortunes/art
add fortunes-min /usr/share/games/fortunes/fortunes
# fortunes-de: "witze" with its .u8 symlink (skipped) and an excluded asciiart.
for i in $(seq 1 60); do echo "Witz Nummer $i über die Straße: $(gen $((200 + i)) 10 de)"; echo %; done |
  put /usr/share/games/fortunes/de/witze
ln -s witze "$root/usr/share/games/fortunes/de/witze.u8"
printf 'ARTMARKER Bild\n%%\n' | put /usr/share/games/fortunes/de/asciiart
add fortunes-de /usr/share/games/fortunes/de/witze /usr/share/games/fortunes/de/witze.u8 \
  /usr/share/games/fortunes/de/asciiart
# man pages: 24 real roff pages each, and a .so stub.
manpage() { # NAME SECTION TITLE-WORD LANG SEED
  printf '.TH %s %s 2024 "fake" "Fake Manual"\n.SH %s\n%s \\- page %s\n.SH DESCRIPTION\n' \
    "${1^^}" "$2" "$3" "$1" "$1"
  printf '.B bold\n%s\n.PP\n%s\n.TP\n.BR \\-x " option"\n%s\n' "$(gen "$5" 30 "$4")" \
    "$(gen $(($5 + 1)) 25 "$4")" "$(gen $(($5 + 2)) 8 "$4")"
}
en_pages=() de_pages=()
for i in $(seq 1 24); do
  manpage "page$i" 7 NAME en $((1000 + 3 * i)) | putgz "/usr/share/man/man7/page$i.7.gz"
  en_pages+=("/usr/share/man/man7/page$i.7.gz")
  manpage "seite$i" 1 BEZEICHNUNG de $((2000 + 3 * i)) | putgz "/usr/share/man/de/man1/seite$i.1.gz"
  de_pages+=("/usr/share/man/de/man1/seite$i.1.gz")
done
printf '.so man7/page1.7\n' | putgz /usr/share/man/man7/stub.7.gz
add manpages "${en_pages[@]}" /usr/share/man/man7/stub.7.gz
add manpages-de "${de_pages[@]}"
# bible: the data file is opaque; a fake `bible` prints 40 chapters as the
# real one does (heading, then "  N verse" lines).
printf 'opaque' | put /usr/lib/bible.data
add bible-kjv-text /usr/lib/bible.data
add bible-kjv /usr/bin/bible
cat >"$work/bin/bible" <<EOF
#!/usr/bin/env bash
for c in \$(seq 1 40); do
  printf '\nGenesis %d\n\n' "\$c"
  for v in 1 2 3; do printf '  %d In the chapter %d verse %d it is said: %s\n' "\$v" "\$c" "\$v" "\$(awk -v seed=\$((c * 10 + v)) -v n=9 -v lang=en -f $work/words.awk)"; done
done
EOF
chmod +x "$work/bin/bible"
export PATH="$work/bin:$PATH"
# manuals: numbered sections (the Debian Reference with a no-break space).
manual() { # LANG SEP SEED
  echo "Table of contents"
  for s in $(seq 1 40); do
    printf '\n1.%d.%s%s\n\n    %s\n    %s\n\n    %s\n' "$s" "$2" "Section $s" "$(gen $(($3 + s)) 12 "$1")" \
      "$(gen $(($3 + 100 + s)) 12 "$1")" "$(gen $(($3 + 200 + s)) 6 "$1")"
  done
}
manual en $'\xc2\xa0' 3000 | putgz /usr/share/debian-reference/debian-reference.en.txt.gz
manual de $'\xc2\xa0' 3000 | putgz /usr/share/debian-reference/debian-reference.de.txt.gz
add debian-reference-en /usr/share/debian-reference/debian-reference.en.txt.gz
add debian-reference-de /usr/share/debian-reference/debian-reference.de.txt.gz
manual en ' ' 4000 | putgz /usr/share/doc/gnu-standards/standards.text.gz
add gnu-standards /usr/share/doc/gnu-standards/standards.text.gz

export FEDLORA_CORPORA_ROOT=$root FEDLORA_CORPORA_INSTALL=0
domains="man-en man-de fortunes-en fortunes-de bible-en sysadmin-en sysadmin-de gnu-en"

# ---- a full run ---------------------------------------------------------------------
out=$work/out/corpora
bash "$script" "$out" 2>"$work/log" || { cat "$work/log" >&2; fail "make_corpora.sh failed on the fake root"; }
for d in $domains; do
  for s in train base heldout; do
    f=$out/$d/$s.txt
    [ -s "$f" ] || fail "$f missing or empty"
    iconv -f UTF-8 -t UTF-8 "$f" >/dev/null 2>&1 || fail "$f is not valid UTF-8"
    grep -q '^$' "$f" && fail "$f has an empty line"
    grep -q '[[:cntrl:]]' "$f" && fail "$f has a control character (tab, CR, backspace, ...)"
    grep -qE '^ | $|  ' "$f" && fail "$f has leading, trailing or doubled spaces"
    awk 'length($0) > 2000 { exit 1 }' "$f" || fail "$f has a document over 2000 bytes"
  done
done
ok
cat "$out"/*/*.txt | sort | uniq -d | grep -q . && fail "a document occurs twice"
ok
grep -rq ARTMARKER "$out" && fail "an excluded fortune file (art, asciiart) was read"
grep -rq -e '\.TH' -e '\\-' -e '\.PP' "$out" && fail "roff markup left in the man pages"
grep -q 'page7 - page page7' "$out"/man-en/*.txt || fail "man page text missing (rendered NAME line)"
grep -q 'BEZEICHNUNG seite3 - page seite3' "$out"/man-de/*.txt || fail "German man page text missing"
grep -q 'Straße' "$out"/fortunes-de/*.txt || fail "German text lost its umlauts"
grep -q 'Caf au lait' "$out"/fortunes-en/*.txt || fail "the non-UTF-8 byte was not dropped"
grep -q '^Genesis 12 In the chapter 12 verse 1 it is said' "$out"/bible-en/*.txt ||
  fail "bible chapter heading and verses (numbers dropped) not joined into one document"
grep -q '^1\.5\. Section 5 ' "$out"/sysadmin-en/*.txt || fail "manual section (no-break space) not a unit"
[ "$(cat "$out"/man-en/*.txt | wc -l)" -eq 24 ] || fail "man-en: expected 24 pages (stub skipped)"
[ "$(cat "$out"/fortunes-en/*.txt | wc -l)" -eq 61 ] || fail "fortunes-en: expected 61 documents (one duplicate removed)"
ok
# units are not split across train/base/heldout: every chapter's verses sit in one document
for s in train base heldout; do grep -o '^Genesis [0-9]*' "$out/bible-en/$s.txt"; done | sort | uniq -d | grep -q . &&
  fail "a bible chapter is in two splits"
# MANIFEST: one row per domain and split, counts equal to the files
awk -F'\t' '!/^#/ && $1 != "domain" { n++ } END { exit n != 24 }' "$out/MANIFEST" || fail "MANIFEST rows"
while IFS=$'\t' read -r d lang s docs bytes tokens pk lic; do
  f=$out/$d/$s.txt
  [ "$docs" -eq "$(wc -l <"$f")" ] || fail "MANIFEST $d $s: documents $docs"
  [ "$bytes" -eq $(($(wc -c <"$f") - docs)) ] || fail "MANIFEST $d $s: bytes $bytes"
  [ "$tokens" -eq $((bytes + docs)) ] || fail "MANIFEST $d $s: tokens $tokens"
  [[ $pk == *=1.0-test* ]] && [ -n "$lic" ] || fail "MANIFEST $d $s: packages '$pk' licence '$lic'"
done < <(grep -v '^#' "$out/MANIFEST" | tail -n +2)
ok
ls -a "$work/out" | grep -q '^\.corpora-tmp' && fail "a temporary directory was left"
# deterministic
bash "$script" "$work/out/again" 2>/dev/null || fail "second run failed"
diff -r "$out" "$work/out/again" >/dev/null || fail "two runs on the same packages differ"
ok

# ---- refusals: a message, a non-zero exit, nothing written --------------------------------
expect_refusal() { # PATTERN OUT (environment as set by the caller)
  local rc=0
  bash "$script" "$2" >/dev/null 2>"$work/err" || rc=$?
  [ "$rc" -ne 0 ] || fail "make_corpora.sh $2 succeeded; expected a refusal ($1)"
  grep -q -- "$1" "$work/err" || fail "message '$(cat "$work/err")' lacks '$1'"
  [ ! -e "$2" ] || [ -z "$(ls -A "$2")" ] || fail "a refused run wrote $2"
  ls -a "$(dirname "$2")" | grep -q '^\.corpora-tmp' && fail "a refused run left a temporary directory"
  ok
}
mkdir -p "$work/bad"
# a missing package: fortunes-de not installed
cp "$db/status" "$work/status.full"
awk 'BEGIN { RS = ""; ORS = "\n\n" } !/^Package: fortunes-de\n/' "$work/status.full" >"$db/status"
expect_refusal "package 'fortunes-de' is not installed" "$work/bad/c1"
cp "$work/status.full" "$db/status"
# an empty domain (after another domain was already written to the temporary directory)
printf '' | putgz /usr/share/doc/gnu-standards/standards.text.gz
FEDLORA_CORPORA_DOMAINS="fortunes-en gnu-en" expect_refusal "domain gnu-en: no train documents" "$work/bad/c2"
# OUT exists and is not empty: untouched
cp -r "$out" "$work/out.copy"
rc=0
bash "$script" "$out" >/dev/null 2>"$work/err" || rc=$?
[ "$rc" -ne 0 ] && grep -q "already exists and is not an empty directory" "$work/err" ||
  fail "an existing OUT was not refused with a message"
diff -r "$out" "$work/out.copy" >/dev/null || fail "a refused run touched an existing OUT"
ok
FEDLORA_CORPORA_DOMAINS="nonsense" expect_refusal "names no known domain" "$work/bad/c3"

echo "$passed passed, 0 failed"
