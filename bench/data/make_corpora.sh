#!/usr/bin/env bash
# make_corpora.sh — German and English multi-domain text from Debian packages.
#
#   bench/data/make_corpora.sh OUT
#
# Installs the source packages (apt-get, as scripts/install-deps.sh does; run
# as root), then writes OUT/<domain>/{train,base,heldout}.txt — one document
# per line, clean UTF-8 — and OUT/MANIFEST. The layout, the domains, the
# cleaning and how partitions are made from it are in docs/corpora.md.
#
# OUT must not exist (or be an empty directory). Everything is written into a
# temporary directory beside OUT and renamed to OUT only when every domain
# has documents in every split: a missing package or an empty domain stops
# the script with a message and leaves nothing behind.
#
# Deterministic: the same installed package versions give the same bytes.
#
# For tests the sources can be redirected (no apt, no root needed):
#   FEDLORA_CORPORA_ROOT=DIR   read packages from DIR as if it were / : the
#                              package database DIR/var/lib/dpkg (status and
#                              info/<pkg>.list, as dpkg keeps them) and the
#                              files under DIR
#   FEDLORA_CORPORA_INSTALL=0  do not run apt-get (only check what is there)
#   FEDLORA_CORPORA_DOMAINS="a b"  make only these domains
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: make_corpora.sh OUT}
root=${FEDLORA_CORPORA_ROOT:-}
install=${FEDLORA_CORPORA_INSTALL:-1}
admindir="${root:-}/var/lib/dpkg"

# Document shaping (docs.awk): documents of at most 2000 bytes, none under 16;
# 10 % of the units held out, 25 % for the base model, 65 % for training.
maxdoc=2000 mindoc=16 heldout_pct=10 base_pct=25

# name | language | packages (the first holds the text) | licence
domains_table="\
man-en|en|manpages|GPL-2+ and Linux-man-pages-copyleft (per page; see /usr/share/doc/manpages/copyright)
man-de|de|manpages-de|GPL-3+
fortunes-en|en|fortunes fortunes-min|BSD (fortune-mod; see /usr/share/doc/fortunes/copyright)
fortunes-de|de|fortunes-de|GPL-2+
bible-en|en|bible-kjv-text bible-kjv|public domain text (KJV); Chip Chapin's packaging free for any use
sysadmin-en|en|debian-reference-en|GPL-2+
sysadmin-de|de|debian-reference-de|GPL-2+
gnu-en|en|gnu-standards|GFDL-1.3+"
tools="man-db groff-base bsdextrautils"

die() { echo "make_corpora.sh: $*" >&2; exit 1; }

wanted=${FEDLORA_CORPORA_DOMAINS:-}
domain_rows() {
  local name rest
  while IFS='|' read -r name rest; do
    if [ -z "$wanted" ] || [[ " $wanted " == *" $name "* ]]; then echo "$name|$rest"; fi
  done <<<"$domains_table"
}

if [ -e "$out" ] && { [ ! -d "$out" ] || [ -n "$(ls -A "$out")" ]; }; then
  die "$out already exists and is not an empty directory; choose a new OUT (nothing was written)"
fi
[ -z "$wanted" ] || [ -n "$(domain_rows)" ] || die "FEDLORA_CORPORA_DOMAINS='$wanted' names no known domain"

pkgs=()
while IFS='|' read -r _ _ p _; do pkgs+=($p); done < <(domain_rows)

# ---- packages ----------------------------------------------------------------------
if [ "$install" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "installing packages needs root (or install them yourself: apt-get install ${pkgs[*]} $tools, then set FEDLORA_CORPORA_INSTALL=0)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  for p in "${pkgs[@]}" $tools; do
    apt-cache show "$p" >/dev/null 2>&1 ||
      die "package '$p' is not in this machine's Debian archive (apt-cache show $p finds nothing); nothing was written"
  done
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" $tools >/dev/null
fi
for p in "${pkgs[@]}"; do
  st=$(dpkg-query --admindir="$admindir" -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] ||
    die "package '$p' is not installed${root:+ under $root} (status: '${st:-unknown}'); apt-get install $p, or run without FEDLORA_CORPORA_INSTALL=0; nothing was written"
done
for t in man col zcat iconv; do
  command -v "$t" >/dev/null || die "'$t' is not on PATH (packages: $tools); nothing was written"
done

version_of() { dpkg-query --admindir="$admindir" -W -f='${Version}' "$1"; }

# Regular files (no symlinks, no directories) of a package whose path matches
# an extended regex, under the root, in byte order.
files_of() {
  local f
  dpkg-query --admindir="$admindir" -L "$1" | grep -E "$2" | sort | while IFS= read -r f; do
    if [ -f "$root$f" ] && [ ! -L "$root$f" ]; then printf '%s\n' "$root$f"; fi
  done
}

# ---- extractors: print units separated by a form-feed line, paragraphs by blank lines
unit_end() { printf '\f\n'; }

# Fortune files: entries separated by lines holding only '%'; each entry is one
# unit of one paragraph (the lines of a fortune are joined by docs.awk).
fortunes() {
  local f
  files_of "$1" "$2" | grep -vE '\.(dat|u8)$' | grep -vE "$3" | while IFS= read -r f; do
    awk '$0 == "%" { printf "\f\n"; next } { gsub(/^[ \t]*$/, ""); if ($0 != "") print } END { printf "\f\n" }' "$f"
  done
}

# Man pages rendered to text by man-db and groff (UTF-8, 80 columns, no
# hyphenation or justification, overstrikes removed by col), the running
# header and footer dropped. Stub pages that only include another (.so) are
# skipped: the page they name is a file of its own.
manpages() {
  local f
  files_of "$1" "$2" | while IFS= read -r f; do
    if zcat -f "$f" | grep -v '^\.\\"' | grep -v '^[[:space:]]*$' | head -n 1 | grep -q '^\.so '; then continue; fi
    LC_ALL=C.UTF-8 MANWIDTH=80 man -E UTF-8 --no-hyphenation --no-justification -l "$f" 2>/dev/null |
      LC_ALL=C.UTF-8 col -bx | sed '1d;$d' || true
    unit_end
  done
}

# The King James Bible through the bible-kjv program (its data file is
# compressed): one unit per chapter ("Genesis 1"), one paragraph per verse
# (the verse numbers dropped).
bible_kjv() {
  local data
  data=$(files_of bible-kjv-text '/bible\.data$' | head -n 1)
  [ -n "$data" ] || return 0
  command -v bible >/dev/null || die "'bible' (package bible-kjv) is not on PATH"
  bible -p "$(dirname "$data")" -l100000 "Gen1:1-Rev22:21" </dev/null |
    awk '/^[^ ].* [0-9]+$/ { printf "\f\n%s\n\n", $0; next }
         /^ +[0-9]+ / { sub(/^ +[0-9]+ /, ""); print; print ""; next }'
  unit_end
}

# Plain-text manuals (the packages ship them beside the HTML): one unit per
# numbered section ("1.2.8. Named pipes", "2.3 Trademarks" at column 0; the
# Debian Reference puts a no-break space, UTF-8 C2 A0, after the number).
manual() {
  local f
  files_of "$1" "$2" | while IFS= read -r f; do
    zcat -f "$f" | awk '/^[0-9]+(\.[0-9]+)*\.?( |\302\240)[^ ]/ { printf "\f\n" } { print }'
    unit_end
  done
}

extract() {
  case $1 in
    man-en) manpages manpages '^/usr/share/man/man[0-9][^/]*/[^/]+\.gz$' ;;
    man-de) manpages manpages-de '^/usr/share/man/de/man[0-9][^/]*/[^/]+\.gz$' ;;
    fortunes-en)
      fortunes fortunes '^/usr/share/games/fortunes/[^/]+$' '/(art|ascii-art)$'
      fortunes fortunes-min '^/usr/share/games/fortunes/[^/]+$' '/(art|ascii-art)$' ;;
    fortunes-de) fortunes fortunes-de '^/usr/share/games/fortunes/de/[^/]+$' '/asciiart$' ;;
    bible-en) bible_kjv ;;
    sysadmin-en) manual debian-reference-en '^/usr/share/debian-reference/debian-reference\.en\.txt\.gz$' ;;
    sysadmin-de) manual debian-reference-de '^/usr/share/debian-reference/debian-reference\.de\.txt\.gz$' ;;
    gnu-en) manual gnu-standards '^/usr/share/doc/gnu-standards/[^/]+\.text\.gz$' ;;
    *) die "no extractor for domain $1" ;;
  esac
}

# ---- build in a temporary directory, rename at the end -----------------------------
parent=$(dirname "$out")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.corpora-tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/.seen"
{
  echo "# fedlora corpora: bench/data/make_corpora.sh (docs/corpora.md)"
  echo "# documents: one per line; bytes: UTF-8 bytes of the documents, newlines not counted;"
  echo "# tokens: fedlora's byte-level tokenizer (fedlora init-model): one token per byte + one EOS per document"
  echo "# units held out / base / train by content hash: ${heldout_pct}% / ${base_pct}% / rest; documents <= ${maxdoc} bytes"
  printf 'domain\tlang\tsplit\tdocuments\tbytes\ttokens\tpackages\tlicence\n'
} >"$tmp/MANIFEST"

while IFS='|' read -r name lang plist licence; do
  echo "make_corpora.sh: $name ($plist)" >&2
  mkdir "$tmp/$name"
  # iconv -c drops bytes that are not UTF-8 (exit status 1 when it did).
  extract "$name" | { iconv -c -f UTF-8 -t UTF-8 || [ $? -eq 1 ]; } |
    awk -v maxdoc=$maxdoc -v mindoc=$mindoc -v heldout_pct=$heldout_pct -v base_pct=$base_pct \
      -v seen="$tmp/.seen" -f "$here/docs.awk" >"$tmp/$name/.tagged"
  versions=""
  for p in $plist; do versions="$versions${versions:+,}$p=$(version_of "$p")"; done
  for split in train base heldout; do
    awk -F'\t' -v s=$split '$1 == s { print substr($0, length(s) + 2) }' "$tmp/$name/.tagged" >"$tmp/$name/$split.txt"
    docs=$(wc -l <"$tmp/$name/$split.txt")
    bytes=$(($(wc -c <"$tmp/$name/$split.txt") - docs))
    [ "$docs" -gt 0 ] ||
      die "domain $name: no $split documents from ${plist// /, } (the packages' files gave $(wc -l <"$tmp/$name/.tagged") documents in all); nothing was written"
    printf '%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n' "$name" "$lang" "$split" "$docs" "$bytes" \
      $((bytes + docs)) "$versions" "$licence" >>"$tmp/MANIFEST"
  done
  cut -f2- "$tmp/$name/.tagged" >>"$tmp/.seen"
  rm "$tmp/$name/.tagged"
done < <(domain_rows)

rm "$tmp/.seen"
[ -d "$out" ] && rmdir "$out"
mv "$tmp" "$out"
chmod 755 "$out"
trap - EXIT
echo "make_corpora.sh: wrote $out" >&2
column -t -s $'\t' <(grep -v '^#' "$out/MANIFEST" | cut -f1-6) >&2 || true
