"""Words and their scripts in model text: what the language reward counts (`word_scripts`) and the rejection
filters measure (`split_words`, `word_count`), and whether a text shows anything (`blank`).

A styled letter (𝐚 ℱ ⁿ ⓐ: `_letter_script`) is a letter of its plain form's script, so a word of three or more
of them in one style is text; alone or in pairs they are variables, as below. Otherwise letter-like symbols are of no
language and are left out of the words (`word_scripts`): ℝ ℓ ℏ 𝐱 (Letterlike
Symbols, Mathematical Alphanumeric Symbols, other font variants), ⁿ ₐ ᵃ (superscripts, subscripts, modifier
letters), µ (micro sign), ² ½ Ⅻ (numbers). A Greek or Latin word of at most 2 letters (θ, Δx, αβ, x, dy: a
variable) is left out unless the target language is written in its script (Greek for `el`, Latin for `en`);
longer words count as their script's. LaTeX commands (\\frac, \\sqrt, \\begin{pmatrix}) are notation and left out;
so are operator names (sin, max, gcd: LaTeX's \\operatorname set, lcm, mod) and indices attached to a symbol
(x_{max}, T_{\\mathrm{eff}}, εᵢⱼₖ: at most 4 letters in a row), unless the target language is written in Latin.
A word is read by its scripts: "Python으로" is an English word and a Korean one; a word of look-alike
scripts (Latin, Cyrillic, Greek) is of the script most of its letters are in ("Cначала" is Russian).
Every pattern here runs in linear time on hostile text (benchmarks/answer_regexes.py times them).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from r1jax.rl.rewards.config import LANGUAGE_SCRIPTS


_INVISIBLE = frozenset("\u115f\u1160\u2800\u3164\uffa0")  # Hangul fillers, the blank Braille pattern
_INVISIBLE_CATEGORIES = ("Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp")  # controls, format (zero-width), lone marks


def blank(text: str) -> bool:
    """Whether `text` shows nothing: whitespace, zero-width and other format characters, lone combining marks."""
    return all(char.isspace() or char in _INVISIBLE or unicodedata.category(char) in _INVISIBLE_CATEGORIES
               for char in text)


# Latin letters that Unicode files as symbols (So): parenthesized ⒜, circled Ⓐ ⓐ, squared 🄰, negative circled 🅐 and
# squared 🅰; read as letters, or English written in them was no word for any language (`_letter_script`)
_ENCLOSED_LETTERS = "\u249c-\u24e9\U0001f130-\U0001f189"
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): what shows nothing (soft hyphen, zero-width
# space, joiners ZWJ ZWNJ, bidi marks, variation selectors, Hangul fillers, tags); inside a word, part of it and no
# letter: a zero-width space every two letters made English variables ("Fi\u200brs\u200bt") that scored 1.0 for
# `zh`, and Persian writes a ZWNJ inside a word (می\u200cخواهم: one word)
_IGNORABLE_CHARS = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
                    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
                    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff")
_IGNORABLE = re.compile("[%s]" % _IGNORABLE_CHARS)


def _mark_chars() -> str:
    """A regex class body of every combining mark (Mn, Mc, Me: accents, the vowel signs of Indic scripts; all lie
    below U+20000 or in U+E0000-U+E0FFF): inside a word, part of it and no letter, as what shows nothing (an
    acute or a combining low line every two letters made English variables that scored 1.0 for `zh`)."""
    ranges: list[list[int]] = []
    for code in (*range(0x20000), *range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(code)).startswith("M"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join("\\U%08x-\\U%08x" % (low, high) for low, high in ranges)


_MARKS = re.compile("[%s]" % _mark_chars())
# runs of letters (and numbers other than digits), with what shows nothing and combining marks inside them
_WORD = re.compile(r"(?:[^\W\d_]|[%s%s])+" % (_ENCLOSED_LETTERS, _IGNORABLE_CHARS + _MARKS.pattern[1:-1]))
_IDEOGRAPHIC = ("CJK", "HIRAGANA", "KATAKANA")  # scripts written without spaces: each character is a word
_FORMS = ("HALFWIDTH ", "FULLWIDTH ", "VERTICAL ")  # presentation forms: the script is the next word
# Japanese marks whose names start with no script: ー (KATAKANA-HIRAGANA PROLONGED SOUND MARK), the kana
# repeat marks 〱-〵, and 々 〆 〇 〻 (IDEOGRAPHIC ITERATION MARK, ...).
_SCRIPT_ALIASES = {"KATAKANA-HIRAGANA": "KATAKANA", "KANA": "KATAKANA", "IDEOGRAPHIC": "CJK"}
SYMBOL = ""  # the script of a letter-like symbol: of no language
# Letter-like symbols, of no language: Letterlike Symbols (ℝ ℕ ℓ ℏ K Å ℵ) and Mathematical Alphanumeric
# Symbols (𝐱 𝔽 𝟙); font variants (<font>: ℎ, Arabic mathematical letters), superscripts and subscripts
# (<super>, <sub>: ⁿ ₐ ᵃ ª); and by name: µ, modifier letters (ʹ ˆ ʼ), the named prefixes of the above.
_SYMBOL_BLOCKS = ((0x2100, 0x214F), (0x1D400, 0x1D7FF))
_SYMBOL_DECOMPOSITIONS = ("<font>", "<super>", "<sub>")
_SYMBOL_NAMES = ("MATHEMATICAL ", "DOUBLE-STRUCK ", "SCRIPT ", "BLACK-LETTER ", "SUPERSCRIPT ", "SUBSCRIPT ",
                 "MODIFIER LETTER ", "MICRO SIGN")
_LANGUAGE_SCRIPTS = frozenset(s for scripts in LANGUAGE_SCRIPTS.values() for s in scripts)
VARIABLE_LETTERS = 2  # a Greek or Latin word of at most this many letters is a variable (θ, Δx, x, dy), not text
_VARIABLE_SCRIPTS = ("GREEK", "LATIN")
# a LaTeX command (\frac), with the environment a \begin or \end names (pmatrix, cases, aligned*): notation
_LATEX_COMMAND = re.compile(r"\\(?:begin|end)\{[a-zA-Z]+\*?\}|\\[a-zA-Z]+")
# Notation written in Latin letters, of no language unless the target is written in Latin (as a Latin variable):
# the operator names of LaTeX's \operatorname set (\sin ... \Pr) and lcm, mod, argmax, argmin, with or without
# their backslash ("所以 sin x + cos x" scored 0.5 for `zh`; a longer word holding one, "Using", is no name), and a
# sub- or superscript group attached to what it indexes (x_{max}, \epsilon_{ijk}, R^{ij}_{kl}): one token of
# letters and digits (n-1, i,j: pieces of at most 2 after the first), so no sentence fits in one, and no run of
# more than INDEX_LETTERS letters (x_{thesumofall}, aᶠⁱʳˢᵗ: English scored 1.0 for `zh`; Rᵢⱼₖₗ, x_{init} stay)
_OPERATOR_NAMES = ("arccos", "arcsin", "arctan", "argmax", "argmin", "liminf", "limsup", "cosh", "coth", "sinh",
                   "tanh", "arg", "cos", "cot", "csc", "deg", "det", "dim", "exp", "gcd", "hom", "inf", "ker", "lcm",
                   "lim", "log", "max", "min", "mod", "sec", "sin", "sup", "tan", "lg", "ln", "Pr")
INDEX_LETTERS = 4  # the most letters in a row of an index (R_{ijkl}, x_{init}); a longer run is a word
_INDEX_RUN = re.compile("[A-Za-z]{%d}" % (INDEX_LETTERS + 1))
# (a group may be written upright: T_{\mathrm{eff}}, E_{\text{kin}}: 'eff', 'kin' were English words for `zh`)
_NOTATION = re.compile(r"(?<![A-Za-z])(?:%s)(?![A-Za-z])|(?<=\S)[_^]\{(?:\\(?:text|mathrm|rm|textrm|mathit|mathsf)\{"
                       r"[A-Za-z0-9]*\}|[A-Za-z0-9]*(?:[-+=*,'.][A-Za-z0-9]{0,2})*)\}" % "|".join(_OPERATOR_NAMES))


def _notation(match: re.Match) -> str:
    """What a `_NOTATION` match leaves: nothing, but an index with a run of more than INDEX_LETTERS letters (its
    \\mathrm aside) stays as written, a word (an operator name of 6 letters, arccos, is no index)."""
    index = match[0][0] in "_^" and _INDEX_RUN.search(_LATEX_COMMAND.sub(" ", match[0]))
    return match[0] if index else " "


@functools.lru_cache(maxsize=8192)
def _script(char: str) -> str:
    """The script of a letter (the first word of its Unicode name, as LANGUAGE_SCRIPTS names them), or
    SYMBOL for a letter-like symbol or a number not written in a language's script (² ½ Ⅻ, but 〇 is CJK)."""
    name = unicodedata.name(char, "UNKNOWN")
    if (any(low <= ord(char) <= high for low, high in _SYMBOL_BLOCKS) or name.startswith(_SYMBOL_NAMES)
            or unicodedata.decomposition(char).startswith(_SYMBOL_DECOMPOSITIONS)):
        return SYMBOL
    for prefix in _FORMS:
        name = name.removeprefix(prefix)
    script = name.split(" ")[0]
    script = _SCRIPT_ALIASES.get(script, script)
    if unicodedata.category(char).startswith("N") and script not in _LANGUAGE_SCRIPTS:
        return SYMBOL
    return script


@functools.lru_cache(maxsize=8192)
def _letter_script(char: str) -> tuple[str, str]:
    """(script, style) of a character of a word. The script is its own (`_script`), but a letter-like symbol that is
    a styled letter (𝐚 𝒂 𝔞 ℱ ⁿ ª ⓐ ⒜ 🄰: its compatibility form, or its name, is a letter) counts as that letter:
    English written in 𝐛𝐨𝐥𝐝 or ⓒⓘⓡⓒⓛⓔⓢ scored 1.0 for `zh`, as no word; numbers (² ½ Ⅻ) and other symbols stay
    SYMBOL. The style is the letter's decomposition tag ('<font>', '<super>', '<circle>'; '' for a plain letter):
    a word ends where it changes, so notation stays variables ("𝐀ᵀ𝐱", "aᵢ", "µm": one or two letters each)."""
    if _IGNORABLE.fullmatch(char) or _MARKS.fullmatch(char):  # shows nothing (a Hangul filler's padding was
        return SYMBOL, ""  # Korean words for `ko`), or a mark on a letter: no letter, and no end of the word
    script = _script(char)
    if script != SYMBOL and not _ENCLOSED.fullmatch(char):
        return script, ""
    if not unicodedata.category(char).startswith(("L", "So")):
        return SYMBOL, ""  # ² ½ Ⅻ
    style = unicodedata.decomposition(char).partition(" ")[0] or "<enclosed>"
    plain = unicodedata.normalize("NFKC", char).strip("()")
    if len(plain) == 1 and plain.isalpha() and plain != char and _script(plain) != SYMBOL:
        return _script(plain), style
    return ("LATIN" if " LATIN " in f" {unicodedata.name(char, '')} " or _ENCLOSED.fullmatch(char) else SYMBOL), style


_ENCLOSED = re.compile("[%s]" % _ENCLOSED_LETTERS)


_INDEX_STYLES = ("<sub>", "<super>")  # letters of an index: ᵢ ⱼ ₘ ᵃ ⁿ
# scripts with letters alike to the eye (Latin C c e o p x, Cyrillic С с е о р х, Greek Ο ο ρ χ): one word
_LOOKALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")
# their letters with a twin in another of them: a word of look-alike scripts is of the script most of its other
# letters (its own) are in, then of the one most of all its letters are in: English with half its letters Cyrillic
# twins ('ѕеcоnd ԝе аԁԁ') was Russian for `ru` (1.0) and `en` (0.0); "Cначала" is Russian by н ч л
_LOOKALIKE_LETTERS = frozenset("ABCEHIJKMNOPSTXYZacdehijklopqsuvwxy"  # Latin
                               "АВСЕНІЈКМОРЅТХУҮӀаԁсеһіјкӏорԛѕԝхуүѵ"  # Cyrillic
                               "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹαικνορυχϲϳ")  # Greek


def _words(text: str) -> list[tuple[str, int, str]]:
    """(script, letters, kind) of each word: every CJK, hiragana or katakana character is a word wherever it
    stands ("a我们" is three words), and each run of other letters between them is one word until the letters'
    style (`_letter_script`: "𝐀ᵀ𝐱" is three words) or script changes ("Python으로" is a Latin word and a Korean
    one: the particle was Latin), but for scripts that share look-alike letters (`_LOOKALIKE_SCRIPTS`): a word of
    those is one word of the script most of its letters without a twin are in, then most of all its letters, the
    first letter's at a tie (`_LOOKALIKE_LETTERS`; "Cначала", Russian
    with a Latin C, is Cyrillic: it was a Latin word, and 'Cначала cложим тpи' scored 2/3 for `en`), and the
    Greek and Latin pieces of a token so cut, no ideograph in it, are as long as they are together ("x를": a
    variable and a particle; "Fi가rs가t": English, 1.0 for `ko` as 2-letter variables); symbols that
    are no letter are left out as if absent ("x²y" is the one word "xy"). The kind is "styled" for a word of
    styled letters, "index" for sub- or superscript letters attached to what they index (εᵢⱼₖ, Rᵢⱼₖₗ, xₘₐₓ:
    notation; "ᶠⁱʳˢᵗ" alone is a styled word), "" for plain letters."""
    words: list[tuple[str, int, str]] = []
    for run in _WORD.findall(text):
        start = len(words)
        open_word, open_style = False, ""  # inside a word of a script written with spaces (the last of `words`)
        first, tally, first_own = "", None, 0  # its first letter's script; its letters by script, once it has
        # two; its letters of the first script that have no twin in another
        base = False  # the last character shown was one an index can be attached to (no index, no ideograph)
        for char in run:
            script, style = _letter_script(char)
            if _IGNORABLE.fullmatch(char):
                continue
            attached, base = base, style not in _INDEX_STYLES and script not in _IDEOGRAPHIC
            if script == SYMBOL:
                continue
            if script in _IDEOGRAPHIC:
                words.append((script, 1, "styled" if style else ""))
                open_word = False
            elif open_word and style == open_style and (script == first or (
                    script in _LOOKALIKE_SCRIPTS and first in _LOOKALIKE_SCRIPTS)):
                lead, own = words[-1][0], char not in _LOOKALIKE_LETTERS
                if script != first or tally:  # of look-alike scripts: of the one most letters are in, first at a tie
                    tally = tally or {first: [first_own, words[-1][1]]}  # (letters of its own, all letters)
                    counts = tally.setdefault(script, [0, 0])
                    counts[0], counts[1] = counts[0] + own, counts[1] + 1
                    if counts > tally[lead] or (counts == tally[lead] and script == first):
                        lead = script
                else:
                    first_own += own
                words[-1] = (lead, words[-1][1] + 1, words[-1][2])
            else:
                kind = "index" if attached and style in _INDEX_STYLES else "styled" if style else ""
                words.append((script, 1, kind))
                open_word, open_style, first, tally = True, style, script, None
                first_own = char not in _LOOKALIKE_LETTERS
        words[start:] = [(script, n, "styled" if kind == "index" and n > INDEX_LETTERS else kind)
                         for script, n, kind in words[start:]]  # (aᶠⁱʳˢᵗ: a styled word, no index)
        pieces = words[start:]  # a token cut by scripts, no ideograph: its Greek and Latin letters are one variable
        if len(pieces) > 1 and not any(script in _IDEOGRAPHIC for script, _, _ in pieces):  # "x를", not "Fi가rs가t"
            letters = sum(n for script, n, kind in pieces if script in _VARIABLE_SCRIPTS and not kind)
            words[start:] = [(script, max(n, letters) if script in _VARIABLE_SCRIPTS and not kind else n, kind)
                             for script, n, kind in pieces]
    return words


def split_words(text: str) -> list[str]:
    """The words of `text` for a length bound or a repetition measure (rejection sampling's `paragraph` and
    `repetition` filters): its whitespace-separated tokens, except that in scripts written without spaces every
    CJK, hiragana or katakana character is a word (as `_words` counts them), and so is each run of letters or
    digits between such characters ("用3个苹果" is five words; punctuation between them, "，", is none). 300
    words then bound about the same text in Chinese or Japanese as in English (a character of theirs is about
    one token of a BPE vocabulary, an English word one or two), and a Chinese loop repeats its n-grams as an
    English one does (a whole line without spaces was one word); Korean is written with spaces between its
    words and counts as English does. What shows nothing (`_IGNORABLE`) is no part of a word: a loop with
    zero-width spaces strewn in still repeats, and Hangul fillers are no words, as for the language reward."""
    words = []
    for token in _IGNORABLE.sub("", text).split():
        if token.isascii():
            words.append(token)
            continue
        # the run between ideographs is a slice from `start` (a string grown by a character at a time was
        # quadratic: 33 s for a token of 10^6 "é", 8 min for 10^6 "𝐚", in the trainer's rejection filters)
        pieces, start, run_has_word = [], 0, False
        for index, char in enumerate(token):
            if char.isalnum() and _script(char) in _IDEOGRAPHIC:
                pieces += [token[start:index], char] if run_has_word else [char]
                start, run_has_word = index + 1, False
            else:  # a letter, digit or punctuation of another script: part of the run between ideographs
                run_has_word = run_has_word or char.isalnum()
        if not pieces:  # no ideograph: the token is one word
            words.append(token)
            continue
        words += pieces + ([token[start:]] if run_has_word else [])
    return words


def word_count(text: str) -> int:
    """The number of `split_words(text)`."""
    return len(split_words(text))


def word_scripts(text: str, target: tuple[str, ...] = ()) -> list[str]:
    """The script of each word that counts for a language written in the scripts `target`: every word (see
    `_words`) outside LaTeX commands ("\\frac", "\\sqrt", "\\begin{pmatrix}": notation) but a Greek or Latin
    one, or a styled one of any script (ℵ₀: the styled Hebrew alef of set theory), of at most VARIABLE_LETTERS
    letters (θ, Δx, x, dy, 𝐱: a variable), and notation (operator names, sin, max; sub- and superscripts,
    x_{max}, εᵢⱼₖ: `_NOTATION`, `_words`), unless `target` is written in that script ("Let θ = 5" is one Latin
    word and one Greek for `el`; "Η γωνία θ" is three Greek words; "设 x = 5" one Chinese word for `zh`, where
    the x counted against it; "the max of x" is all English for `en`, "所以 max" one Chinese word for `zh`)."""
    if "LATIN" not in target:  # (before the commands go: \epsilon_{ijk}'s group is attached to \epsilon)
        text = _NOTATION.sub(_notation, text)
    return [script for script, letters, kind in _words(_LATEX_COMMAND.sub(" ", text))
            if script in target or (kind != "index" and (letters > VARIABLE_LETTERS
                                                         or not (kind or script in _VARIABLE_SCRIPTS)))]
