"""Both template syntaxes as oned reads them, the errors it gives, and the XML/ONE forms it writes."""

from __future__ import annotations

import pytest
from lxml import etree

from testcloud.core.template import Template, TemplateParseError


def attrs(template: Template) -> list[tuple[str, object]]:
    return [(a.name, a.value) for a in template]


def test_single_attributes_quoted_unquoted_and_names_upper_cased() -> None:
    parsed = Template.parse('name = "web server"\nCPU=0.5\n  memory   =  1024  \n')
    assert attrs(parsed) == [("NAME", "web server"), ("CPU", "0.5"), ("MEMORY", "1024")]


def test_vectors_on_one_line_and_across_lines() -> None:
    text = 'NIC = [ NETWORK_ID = "0", IP = "10.231.64.9" ]\nDISK = [\n  image_id = 3,\n  TARGET = vda\n]\n'
    parsed = Template.parse(text)
    assert attrs(parsed) == [
        ("NIC", {"NETWORK_ID": "0", "IP": "10.231.64.9"}),
        ("DISK", {"IMAGE_ID": "3", "TARGET": "vda"}),
    ]


def test_comments_and_blank_lines_are_ignored() -> None:
    text = '# a comment\n\n   # indented comment\nA = "1"\n\n# B = "2"\nC = "3" \n'
    assert attrs(Template.parse(text)) == [("A", "1"), ("C", "3")]


def test_multi_line_quoted_value_is_kept_whole() -> None:
    text = 'START_SCRIPT = "#!/bin/bash\necho one\necho two"\nNEXT = "x"'
    parsed = Template.parse(text)
    assert parsed.get("START_SCRIPT") == "#!/bin/bash\necho one\necho two"
    assert parsed.get("NEXT") == "x"


def test_escaped_quotes_are_unescaped() -> None:
    parsed = Template.parse('SCHED_REQUIREMENTS = "HYPERVISOR=\\"kvm\\""\nV = [ A = "say \\"hi\\"" ]')
    assert parsed.get("SCHED_REQUIREMENTS") == 'HYPERVISOR="kvm"'
    assert parsed.get_vector("V") == {"A": 'say "hi"'}


def test_repeated_keys_are_all_kept_in_order() -> None:
    parsed = Template.parse('NIC = [ NETWORK_ID = "0" ]\nNIC = [ NETWORK_ID = "1" ]\nLABEL = a\nLABEL = b')
    assert [n["NETWORK_ID"] for n in parsed.vectors("NIC")] == ["0", "1"]
    assert [a.value for a in parsed.get_all("LABEL")] == ["a", "b"]


def test_repeated_member_of_a_vector_keeps_the_first() -> None:
    assert Template.parse('V = [ A = "1", A = "2" ]').get_vector("V") == {"A": "1"}


def test_empty_values() -> None:
    parsed = Template.parse('A = ""\nB =\nC = [ ]\nD = [ X = "" ]')
    assert attrs(parsed) == [("A", ""), ("B", ""), ("C", {}), ("D", {"X": ""})]


def test_values_are_trimmed() -> None:
    assert Template.parse('A = "  padded  "').get("A") == "padded"


def test_xml_syntax_any_root_single_and_vector_attributes() -> None:
    xml = (
        "<WHATEVER><NAME><![CDATA[vm one]]></NAME><CPU>1</CPU><EMPTY></EMPTY>"
        "<CONTEXT><NETWORK><![CDATA[YES]]></NETWORK><TOKEN>YES</TOKEN></CONTEXT>"
        "<NIC><NETWORK_ID>0</NETWORK_ID></NIC><NIC><NETWORK_ID>1</NETWORK_ID></NIC></WHATEVER>"
    )
    parsed = Template.parse(xml)
    assert attrs(parsed) == [
        ("NAME", "vm one"),
        ("CPU", "1"),
        ("CONTEXT", {"NETWORK": "YES", "TOKEN": "YES"}),
        ("NIC", {"NETWORK_ID": "0"}),
        ("NIC", {"NETWORK_ID": "1"}),
    ]


def test_xml_as_pyone_sends_nested_dicts() -> None:
    """pyone turns a nested dict into XML with every leaf in CDATA."""
    import pyone.util

    xml = pyone.util.cast2one({"TEMPLATE": {"NAME": "x", "CONTEXT": {"A": 'q"uote', "B": "<b>"}}})
    parsed = Template.parse(xml)
    assert parsed.get("NAME") == "x"
    assert parsed.get_vector("CONTEXT") == {"A": 'q"uote', "B": "<b>"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("A B", "syntax error, unexpected VARIABLE, expecting EQUAL or EQUAL_EMPTY"),
        ('= "x"', "syntax error, unexpected EQUAL, expecting $end or VARIABLE"),
        ('A = [ B = "1"', "syntax error, unexpected $end, expecting COMMA or CBRACKET"),
        ('A = [ B = "1" C = "2" ]', "syntax error, unexpected VARIABLE, expecting COMMA or CBRACKET"),
        ('A = [ B = [ C = "1" ] ]', "syntax error, unexpected OBRACKET, expecting STRING"),
        ("A = ", "syntax error, unexpected $end, expecting OBRACKET or CCDATA or STRING"),
    ],
)
def test_one_syntax_errors_name_the_problem_and_place(text: str, fragment: str) -> None:
    with pytest.raises(TemplateParseError) as error:
        Template.parse(text)
    assert str(error.value).startswith("Parse error: ")
    assert fragment in str(error.value)
    assert " at line " in str(error.value)


def test_error_location_counts_lines() -> None:
    with pytest.raises(TemplateParseError, match="at line 3"):
        Template.parse('A = "1"\nB = "2"\nC D\n')


def test_cdata_terminator_in_a_value_is_refused_like_oned() -> None:
    with pytest.raises(TemplateParseError) as error:
        Template.parse('A = "x]]>y"')
    assert str(error.value) == "Parse error."


def test_malformed_xml() -> None:
    with pytest.raises(TemplateParseError) as error:
        Template.parse("<TEMPLATE><A>1</B></TEMPLATE>")
    assert str(error.value) == "Parse error: XML Template malformed."


def test_output_is_sorted_by_name_cdata_and_vector_members_sorted() -> None:
    template = Template([("ZED", "1"), ("ALPHA", "a]]>b"), ("NIC", {"Z": "2", "A": "1"}), ("ALPHA", "c")])
    xml = template.to_xml("TEMPLATE")
    root = etree.fromstring(xml.encode())
    assert [e.tag for e in root] == ["ALPHA", "ALPHA", "NIC", "ZED"]
    assert root[0].text == "a]]>b"
    assert [e.tag for e in root[2]] == ["A", "Z"]
    assert Template().to_xml("USER_TEMPLATE") == "<USER_TEMPLATE/>"


def test_one_syntax_output_reads_back_to_the_same_template() -> None:
    original = Template(
        [
            ("NAME", 'quote " and\nnewline'),
            ("CONTEXT", {"A": "1", "B": 'x"y'}),
            ("EMPTY", ""),
            ("NIC", {"NETWORK_ID": "0"}),
            ("NIC", {"NETWORK_ID": "1"}),
        ]
    )
    assert attrs(Template.parse(original.to_one())) == attrs(original)


def test_merge_replaces_every_attribute_of_a_name_and_empty_vectors_only_delete() -> None:
    base = Template.parse(
        'NIC = [ NETWORK_ID = "0" ]\nNIC = [ NETWORK_ID = "1" ]\nCPU = "1"\nOS = [ ARCH = "x86_64" ]'
    )
    base.merge(Template.parse('NIC = [ NETWORK_ID = "7" ]\nOS = [ ]\nMEMORY = "64"'))
    assert base.vectors("NIC") == [{"NETWORK_ID": "7"}]
    assert base.get_all("OS") == []
    assert base.get("CPU") == "1" and base.get("MEMORY") == "64"
