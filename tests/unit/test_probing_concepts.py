"""The labels of the concept data sets, checked on small sources whose answer is written out."""

from __future__ import annotations

from mechscope.probing.concepts import _token_labels, char_classes, code_lines

SRC = '''"""Module docstring."""
import os  # a comment
# a comment line
def f(x):
    """Function docstring."""
    if x is None:
        return "none"
    return os.path.join(x, 'y')
'''


def test_code_lines_drop_docstrings_and_comment_lines():
    code = code_lines(SRC)
    assert "docstring" not in code and "# a comment line" not in code
    assert "def f(x):" in code and 'return "none"' in code and "import os" in code


def test_char_classes_mark_keywords_identifiers_and_strings():
    c = char_classes(SRC)
    at = SRC.index
    assert c["keyword"][at("import")] and c["keyword"][at("def ")] and c["keyword"][at("None") + 1]
    assert c["identifier"][at("os.path") + 3] and not c["keyword"][at("os.path")]
    assert c["string"][at('"none"')] and c["string"][at("'y'") + 1] and c["string"][at("Function")]
    assert not c["string"][at("return os")]


def test_token_labels_read_non_space_characters_and_leave_straddling_tokens_out():
    src = 'if x: "ab"'
    c = char_classes(src)
    offsets = [(0, 2), (2, 4), (4, 5), (5, 7), (7, 10), (6, 8)]  # "if", " x", ":", ' "', 'ab"', '"a'
    assert _token_labels(src, offsets, c["keyword"], c["identifier"]) == [1, 0, -1, -1, -1, -1]
    assert _token_labels(src, offsets, c["string"], ~c["string"]) == [0, 0, 0, 1, 1, 1]
