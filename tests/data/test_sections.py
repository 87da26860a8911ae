"""Section parsing on the report formats the loaders meet, and the target text round trip."""

import pytest

from radflow_jax.data.sections import (
    FINDINGS_TAG,
    IMPRESSION_TAG,
    SectionError,
    Sections,
    format_target,
    parse_sections,
    parse_target,
)

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough and fever.  // ?pna

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The lungs are clear.  No pleural effusion or
 pneumothorax.   Heart size is normal.

 IMPRESSION:

 1. No acute cardiopulmonary process.
 2. Findings were discussed with Dr. ___ at 10:15.

 NOTIFICATION:  Dr. ___ was paged.
"""


@pytest.mark.parametrize(
    "text, findings, impression",
    [
        (
            MIMIC_REPORT,
            "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.",
            "1. No acute cardiopulmonary process. "
            "2. Findings were discussed with Dr. ___ at 10:15.",
        ),
        # Impression before findings, a wet read and recommendations after.
        (
            "WET READ: no ptx\nIMPRESSION: Small left effusion.\nFINDINGS: Blunted left angle.\n"
            "RECOMMENDATION(S): Follow-up in 6 weeks.",
            "Blunted left angle.",
            "Small left effusion.",
        ),
        # Lower case, odd spacing, space before the colon.
        ("findings :  lungs   clear.\nimpression:normal", "lungs clear.", "normal"),
        ("Findings:\tno effusion.\n\n  Impressions :  none.", "no effusion.", "none."),
        ("FINDING: Heart normal.\nCONCLUSION: Normal study.", "Heart normal.", "Normal study."),
        ("Finding: a.\nConclusions: b.", "a.", "b."),
        # Inline headers after a sentence, and capitals anywhere.
        ("History: cough. Findings: lungs clear. Impression: normal.", "lungs clear.", "normal."),
        ("FINDINGS: lungs clear IMPRESSION: normal", "lungs clear", "normal"),
        ("Comparison: none; findings: clear; impression: ok", "clear;", "ok"),
        # Findings-and-impression is the Impression (MIMIC-CXR section parser convention).
        ("INDICATION: dyspnea.\nFINDINGS AND  IMPRESSION: No acute.", "", "No acute."),
        ("FINDINGS / IMPRESSION: stable.", "", "stable."),
        # Dash separator and a header alone on its line, both at line start.
        ("Findings - clear lungs.\nImpression - normal.", "clear lungs.", "normal."),
        ("FINDINGS\nclear lungs.\nIMPRESSION\nnormal.", "clear lungs.", "normal."),
        # Misspelled headers seen in MIMIC-CXR.
        ("FINDNGS: clear.\nIMPRESSON: normal.", "clear.", "normal."),
        # Only one section.
        ("INDICATION: pain.\nIMPRESSION: No fracture.", "", "No fracture."),
        ("FINDINGS: Normal heart.", "Normal heart.", ""),
        # A repeated section is joined in order.
        ("FINDINGS: a.\nIMPRESSION: b.\nADDENDUM: c.\nFINDINGS: d.", "a. d.", "b."),
        # Measurements, percents and symbols stay as written.
        (
            "FINDINGS: PSV 245 cm/s, ICA/CCA ratio 4.1.\nIMPRESSION: >=70% stenosis (right ICA).",
            "PSV 245 cm/s, ICA/CCA ratio 4.1.",
            ">=70% stenosis (right ICA).",
        ),
    ],
)
def test_parse_sections_formats(text, findings, impression):
    assert parse_sections(text) == Sections(findings=findings, impression=impression)


@pytest.mark.parametrize(
    "text",
    [
        "The findings: consistent with prior study.",  # lower case, mid-sentence: not a header
        "Lungs clear, no impression of mass.",
        "Findings-based review: clear.",  # dash not followed by a space
        "Normal study. findings- clear",  # dash header only at line start
    ],
)
def test_text_that_is_not_a_header(text):
    with pytest.raises(SectionError, match="no FINDINGS or IMPRESSION header"):
        parse_sections(text)
    assert parse_sections(text, fallback="findings") == Sections(" ".join(text.split()), "")


def test_fallback_findings_is_r2gen_convention():
    text = "The heart is normal in size.  The lungs\nare clear. No effusion."
    assert parse_sections(text, fallback="findings") == Sections(
        findings="The heart is normal in size. The lungs are clear. No effusion.", impression=""
    )


def test_fallback_findings_drops_other_headed_sections():
    text = "The lungs are clear.\nCOMPARISON: none."
    assert parse_sections(text, fallback="findings") == Sections("The lungs are clear.", "")
    with pytest.raises(SectionError, match="no text outside other sections"):
        parse_sections("INDICATION: cough.\nCOMPARISON: none.", fallback="findings")


@pytest.mark.parametrize(
    "text, findings, impression",
    [
        ("Heart normal. Lungs clear! No disease.", "Heart normal. Lungs clear!", "No disease."),
        ("Lungs clear. 1. No pneumonia. 2. No effusion.", "Lungs clear. 1. No pneumonia.",
         "2. No effusion."),
        ("Heart size 12.5 cm. Normal.", "Heart size 12.5 cm.", "Normal."),
        ("Single sentence.", "", "Single sentence."),
    ],
)
def test_fallback_last_sentence(text, findings, impression):
    assert parse_sections(text, fallback="last_sentence") == Sections(findings, impression)


def test_fallback_does_not_apply_when_a_header_exists():
    text = "Heart normal. IMPRESSION: Normal."
    for fallback in ("error", "findings", "last_sentence"):
        assert parse_sections(text, fallback=fallback) == Sections("", "Normal.")


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
@pytest.mark.parametrize("fallback", ["error", "findings", "last_sentence"])
def test_empty_report_raises(text, fallback):
    with pytest.raises(SectionError, match="empty report"):
        parse_sections(text, fallback=fallback)


@pytest.mark.parametrize("text", ["FINDINGS:\nIMPRESSION:", "INDICATION: cough.\nFINDINGS:   \n"])
def test_headers_with_empty_sections_raise(text):
    with pytest.raises(SectionError, match="both sections are empty"):
        parse_sections(text, fallback="findings")


def test_unknown_fallback_is_rejected():
    with pytest.raises(ValueError, match="fallback must be one of"):
        parse_sections("FINDINGS: a", fallback="impression")


def test_format_target():
    target = format_target(Sections("Lungs clear.", "Normal."))
    assert target == "<findings> Lungs clear. <impression> Normal."
    assert format_target(Sections("", "Normal.")) == "<findings> <impression> Normal."
    assert format_target(Sections("Lungs clear.", "")) == "<findings> Lungs clear. <impression>"
    with pytest.raises(SectionError, match="section tag"):
        format_target(Sections("a <impression> b", "c"))


@pytest.mark.parametrize(
    "sections",
    [
        Sections("Lungs clear. No effusion.", "1. Normal. 2. Stable."),
        Sections("", "No acute process."),
        Sections("PSV 245 cm/s, ratio 4.1.", ""),
        Sections("", ""),
        Sections("a < b > c", ">=70 %"),
    ],
)
def test_target_round_trip(sections):
    target = format_target(sections)
    assert target.startswith(FINDINGS_TAG) and IMPRESSION_TAG in target
    assert parse_target(target) == sections


def test_round_trip_from_parsed_report():
    sections = parse_sections(MIMIC_REPORT)
    assert parse_target(format_target(sections)) == sections


@pytest.mark.parametrize(
    "generated, findings, impression",
    [
        ("lungs clear. no effusion.", "lungs clear. no effusion.", ""),  # no tags at all
        ("<findings> lungs clear.", "lungs clear.", ""),  # impression never started
        ("lungs clear. <impression> normal.", "lungs clear.", "normal."),  # findings tag missing
        ("<impression> normal.", "", "normal."),
        ("junk <findings> lungs clear. <impression> normal.", "lungs clear.", "normal."),
        ("<findings> a <impression> b <findings> a <impression> b", "a a", "b b"),  # repetition
        ("<impression> b <findings> a", "a", "b"),  # order swapped
        ("<FINDINGS>a<Impression>b", "a", "b"),
        ("< findings > a\n\n< impression >  b", "a", "b"),
        ("<findings><impression>", "", ""),
        ("", "", ""),
        ("<findings> a <unk> <image> b", "a <unk> <image> b", ""),  # other tokens are plain text
    ],
)
def test_parse_target_tolerates_generated_text(generated, findings, impression):
    assert parse_target(generated) == Sections(findings, impression)
