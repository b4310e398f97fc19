"""Every class of playbook error is reported at its own line and column."""

from __future__ import annotations

import pytest

from orchestrator.loader import Catalog
from orchestrator.problems import Position, Problem, Severity

UNGATED_WORKSPACE = "name: test workspace\n"


def the_problem(book, catalog: Catalog) -> Problem:
    """The one problem reported for `book`; fails when there are more or none."""
    problems = book.problems_in(catalog)
    assert len(problems) == 1, "\n".join(str(p) for p in problems)
    return problems[0]


def is_skipped(book, catalog: Catalog) -> bool:
    loaded = [entry.path for entry in catalog.playbooks]
    return book.path in catalog.skipped and book.path not in loaded


# --- keys -------------------------------------------------------------------------


def test_an_unknown_key_is_reported_at_the_key_with_a_suggestion(
    folder, minimal_playbook
) -> None:
    """A misspelt top-level key points at the key and names the right one."""
    # Given a playbook with `holdot:` for `holdout:`
    book = folder.playbook(minimal_playbook + "holdot: 5%\n")

    # When the folder is loaded
    catalog = folder.load()

    # Then the problem sits on `holdot` and suggests `holdout`
    problem = the_problem(book, catalog)
    assert book.at("holdot") == problem.position
    assert "unknown key `holdot`" in problem.message
    assert "did you mean `holdout`?" in problem.message
    assert is_skipped(book, catalog)


def test_an_unknown_nested_key_is_reported_at_its_own_line(
    folder, minimal_playbook
) -> None:
    """Inside `nudge`, `chanel:` is found at its indented column."""
    text = minimal_playbook.replace("  channel: intercom", "  chanel: intercom")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert Position(7, 3) == book.at("chanel") == problem.position
    assert "did you mean `channel`?" in problem.message


def test_a_misspelt_required_key_is_reported_once_not_also_as_missing(
    folder, minimal_playbook
) -> None:
    """`ownr:` instead of `owner:` gives "did you mean", not a second "missing"."""
    book = folder.playbook(minimal_playbook.replace("owner:", "ownr:"))

    problem = the_problem(book, folder.load())

    assert book.at("ownr") == problem.position
    assert "did you mean `owner`?" in problem.message


def test_a_missing_key_is_reported_at_the_mapping_that_lacks_it(
    folder, minimal_playbook
) -> None:
    """An `invite:` without `share:` is reported at `invite:`, with the key's help."""
    # Given an invite that gives a role but not what it shares
    text = minimal_playbook.replace("share: workspace_invite", "role: reviewer")
    book = folder.playbook(text)

    # When loaded
    problem = the_problem(book, folder.load())

    # Then the problem is at the `invite` key and names `share`
    assert book.at("invite:") == problem.position
    assert "missing `share`" in problem.message
    assert "workspace_invite" in problem.message


def test_a_missing_top_level_key_is_reported_at_the_start_of_the_playbook(
    folder, minimal_playbook
) -> None:
    """Without `owner:`, the problem points at the playbook's first key."""
    text = "# a comment line\n" + minimal_playbook.replace("owner: growth\n", "")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert Position(2, 1) == book.at("id:") == problem.position
    assert "missing `owner`" in problem.message


# --- values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "needle", "suggestion"),
    [
        (
            ("share: workspace_invite", "share: workspace_invte"),
            "workspace_invte",
            "did you mean `workspace_invite`?",
        ),
        (
            ("  channel: intercom", "  channel: intercom\n  on_ambiguous: resnd"),
            "resnd",
            "did you mean `resend`?",
        ),
    ],
)
def test_a_value_outside_its_choices_is_reported_with_a_suggestion(
    folder,
    minimal_playbook,
    edit: tuple[str, str],
    needle: str,
    suggestion: str,
) -> None:
    """A near-miss enum value points at the value and names the closest choice."""
    book = folder.playbook(minimal_playbook.replace(*edit))

    problem = the_problem(book, folder.load())

    assert book.at(needle) == problem.position
    assert f"`{needle}` is not allowed here" in problem.message
    assert suggestion in problem.message


def test_a_duration_that_cannot_be_read_is_reported_at_the_value(
    folder, minimal_playbook
) -> None:
    """`delay: 2 fortnights` is refused at the value, with the spellings that work."""
    # Given a trigger delay in a unit referloop does not know
    text = minimal_playbook.replace(
        "  event: report_shared\n", "  event: report_shared\n  delay: 2 fortnights\n"
    )
    book = folder.playbook(text)

    # When loaded
    problem = the_problem(book, folder.load())

    # Then the problem is at the value and shows how to write a duration
    assert Position(6, 10) == book.at("2 fortnights") == problem.position
    assert "`2 fortnights` is not a duration" in problem.message
    assert "`2h`" in problem.message


@pytest.mark.parametrize(
    ("added", "needle", "phrase"),
    [
        ("holdout: ten percent\n", "ten percent", "is not a percentage"),
        ("holdout: 150%\n", "150%", "150% is out of range"),
        ("limits:\n  per_user: 1 every 14d\n", "1 every 14d", "is not a cap"),
        (
            "limits:\n  per_user: 1 per fortnight\n",
            "1 per fortnight",
            "`fortnight` is not",
        ),
        (
            "limits:\n  quiet_hours: 20:00-25:00\n",
            "20:00-25:00",
            "not a range of hours",
        ),
        ("limits:\n  quiet_hours: 09:00-09:00\n", "09:00-09:00", "is empty"),
        ("limits:\n  reentry: after 2 fortnights\n", "after 2", "is not a duration"),
    ],
)
def test_a_unit_value_that_cannot_be_read_is_reported_at_the_value(
    folder, minimal_playbook, added, needle, phrase
) -> None:
    """Percentages, caps and clock ranges: the problem is at the value's column."""
    book = folder.playbook(minimal_playbook + added)

    problem = the_problem(book, folder.load())

    assert book.at(needle) == problem.position
    assert phrase in problem.message


def test_a_duration_too_long_to_count_is_a_problem_at_its_value(
    folder, minimal_playbook
) -> None:
    """A delay of 10^20 days is refused at its value, never raised as a crash."""
    # Given a delay far beyond what a timedelta holds
    text = minimal_playbook.replace(
        "  event: report_shared\n",
        "  event: report_shared\n  delay: 99999999999999999999d\n",
    )
    book = folder.playbook(text)

    # When the folder is loaded
    catalog = folder.load()

    # Then the author gets a problem at the value, and the file is skipped
    problem = the_problem(book, catalog)
    assert book.at("99999999999999999999d") == problem.position
    assert is_skipped(book, catalog)


# --- channels ---------------------------------------------------------------------


def test_a_channel_without_its_vendor_reference_is_reported_at_the_channel(
    folder, minimal_playbook, on_channel
) -> None:
    """`channel: braze` with no `braze:` block says to add one."""
    book = folder.playbook(on_channel(minimal_playbook, "braze"))

    problem = the_problem(book, folder.load())

    assert Position(7, 12) == book.at("braze") == problem.position
    assert "`braze` has no vendor reference" in problem.message
    assert "add `braze:`" in problem.message


def test_an_unknown_channel_is_reported_with_a_suggestion(
    folder, minimal_playbook, on_channel
) -> None:
    """`channel: brazee` suggests `braze`."""
    book = folder.playbook(on_channel(minimal_playbook, "brazee"))

    problem = the_problem(book, folder.load())

    assert book.at("brazee") == problem.position
    assert "no channel `brazee`" in problem.message
    assert "did you mean `braze`?" in problem.message


# --- Liquid -----------------------------------------------------------------------

BLOCK_BODY = """\
    body: |
      Hello {{ user.first_name }},
      {LINE}
      Thanks
"""


def with_block_body(playbook: str, line: str) -> str:
    block = BLOCK_BODY.replace("{LINE}", line)
    return playbook.replace(
        "    body: Invite a colleague to {{ account.id }}.\n", block
    )


def test_a_liquid_syntax_error_in_a_block_scalar_is_at_its_own_line(
    folder, minimal_playbook
) -> None:
    """The problem points into the `|` block at the bad Liquid, not at `body:`."""
    # Given a three-line body whose middle line has a broken expression
    text = with_block_body(minimal_playbook, "Invite {{ user..id }} today.")
    book = folder.playbook(text)

    # When loaded
    problem = the_problem(book, folder.load())

    # Then the position is the `..` on the middle line of the block
    assert book.at("..id") == problem.position
    assert book.at("body: |").line != problem.position.line
    assert problem.message.startswith("Liquid:")


def test_a_dangling_liquid_filter_is_reported_on_its_own_line(
    folder, minimal_playbook
) -> None:
    """`{{ user.id | }}` on the middle line of a block is reported on that line.

    python-liquid gives no index for this error (`start_index` -1); the loader must
    still not send the author to the last line of the template.
    """
    text = with_block_body(minimal_playbook, "Invite {{ user.id | }} today.")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert book.at("{{ user.id | }}").line == problem.position.line
    assert problem.message.startswith("Liquid:")


def test_an_unknown_liquid_filter_is_reported_on_its_line(
    folder, minimal_playbook
) -> None:
    """`| upcse` would fail on every send, so lint reports it, naming the filter."""
    # Given a body that pipes a field through a misspelt filter
    line = "Invite {{ user.first_name | upcse }} today."
    book = folder.playbook(with_block_body(minimal_playbook, line))

    # When loaded
    catalog = folder.load()

    # Then the filter is reported on its own line and the playbook is skipped
    problem = the_problem(book, catalog)
    assert book.at(line).line == problem.position.line
    assert "upcse" in problem.message
    assert is_skipped(book, catalog)


def test_an_unknown_liquid_variable_is_reported_with_a_suggestion(
    folder, minimal_playbook
) -> None:
    """`{{ usr.name }}` inside a block points at `usr` and suggests `user`."""
    text = with_block_body(minimal_playbook, "Invite {{ usr.name }} today.")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert book.at("usr.name") == problem.position
    assert "no `usr` in this context" in problem.message
    assert "did you mean `user`?" in problem.message


def test_event_properties_are_unknown_to_a_cohort_trigger(
    folder, minimal_playbook
) -> None:
    """A cohort trigger has no `trigger.properties`; the problem lists what it has."""
    text = minimal_playbook.replace("event: report_shared", "cohort: mixpanel:48213")
    text = text.replace("{{ account.id }}", "{{ trigger.properties.x }}")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert book.at("trigger.properties.x") == problem.position
    assert "`trigger` has no `properties`" in problem.message
    assert "entered_at" in problem.message


def test_an_undeclared_user_field_is_an_error_when_the_workspace_declares_them(
    folder, minimal_playbook
) -> None:
    """With `fields.user` declared, `{{ user.nickname }}` is refused at its place."""
    folder.workspace(
        "activation:\n  property: user.activated_at\n"
        "fields:\n  user:\n    first_name: Priya\n"
    )
    text = minimal_playbook.replace("{{ account.id }}", "{{ user.nickname }}")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert book.at("user.nickname") == problem.position
    assert "`user` has no `nickname`" in problem.message
    assert "first_name" in problem.message


def test_an_unknown_event_property_is_an_error_when_the_event_is_declared(
    folder, minimal_playbook
) -> None:
    """With the event's fields declared, a property it lacks is refused."""
    folder.workspace(
        "activation:\n  property: user.activated_at\n"
        "fields:\n  events:\n    report_shared:\n      report_name: Q3 pipeline\n"
    )
    text = minimal_playbook.replace("{{ account.id }}", "{{ trigger.properties.rpt }}")
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert book.at("trigger.properties.rpt") == problem.position
    assert "the event has no property `rpt`" in problem.message
    assert "report_name" in problem.message


# --- caps and hours ---------------------------------------------------------------


def test_caps_that_contradict_each_other_are_reported_at_the_loose_one(
    folder, minimal_playbook
) -> None:
    """`5 per 1d` can never bind beside `2 per 7d`: the error is on `5 per 1d`."""
    book = folder.playbook(
        minimal_playbook + "limits:\n  per_user: [5 per 1d, 2 per 7d]\n"
    )

    problem = the_problem(book, folder.load())

    assert book.at("5 per 1d") == problem.position
    assert "caps contradict" in problem.message


def test_a_per_user_cap_looser_than_the_per_account_cap_is_an_error(
    folder, minimal_playbook
) -> None:
    """A user allowed 5 a week in an account allowed 2 a week is a contradiction."""
    limits = "limits:\n  per_user: 5 per 7d\n  per_account: 2 per 7d\n"
    book = folder.playbook(minimal_playbook + limits)

    problem = the_problem(book, folder.load())

    assert book.at("5 per 7d") == problem.position
    assert "caps contradict" in problem.message
    assert "per account" in problem.message


def test_a_cap_of_zero_is_an_error_that_points_to_enabled_false(
    folder, minimal_playbook
) -> None:
    """`0 per 7d` never allows a send; pausing is written `enabled: false`."""
    book = folder.playbook(minimal_playbook + "limits:\n  per_user: 0 per 7d\n")

    problem = the_problem(book, folder.load())

    assert book.at("0 per 7d") == problem.position
    assert "never allows a send" in problem.message
    assert "enabled: false" in problem.message


@pytest.mark.parametrize(
    ("quiet", "window"),
    [("20:00-08:00", "21:00-23:00"), ("20:00-08:00", "22:00-07:00")],
)
def test_a_send_window_inside_quiet_hours_is_an_error_at_the_window(
    folder, minimal_playbook, quiet: str, window: str
) -> None:
    """Nothing could ever be sent: the error is on the window's hours."""
    limits = f"limits:\n  quiet_hours: {quiet}\n  send_window:\n    hours: {window}\n"
    book = folder.playbook(minimal_playbook + limits)

    problem = the_problem(book, folder.load())

    assert book.at(window) == problem.position
    assert "inside the quiet hours" in problem.message


def test_a_send_window_inside_the_workspace_quiet_hours_is_an_error(
    folder, minimal_playbook
) -> None:
    """The workspace's default quiet hours count when the playbook sets none."""
    folder.workspace(
        "quiet_hours: 20:00-08:00\nactivation:\n  property: user.activated_at\n"
    )
    limits = "limits:\n  send_window:\n    hours: 21:00-23:00\n"
    book = folder.playbook(minimal_playbook + limits)

    problem = the_problem(book, folder.load())

    assert book.at("21:00-23:00") == problem.position
    assert "20:00-08:00" in problem.message


# --- rewards ----------------------------------------------------------------------


def test_a_reward_without_a_qualifying_event_is_reported_at_reward(
    folder, minimal_playbook
) -> None:
    """No `earned_on:` means no qualifying event: reported at `reward:`."""
    reward = "reward:\n  referrer:\n    grant: early_access\n"
    book = folder.playbook(minimal_playbook + reward)

    problem = the_problem(book, folder.load())

    assert book.at("reward:") == problem.position
    assert "missing `earned_on`" in problem.message
    assert "qualifying event" in problem.message


def test_a_reward_for_nobody_is_reported_inside_the_reward(
    folder, minimal_playbook
) -> None:
    """Neither `referrer:` nor `invitee:` is an error at the reward's first key."""
    book = folder.playbook(
        minimal_playbook + "reward:\n  earned_on: invitee_activated\n"
    )

    problem = the_problem(book, folder.load())

    assert book.at("earned_on") == problem.position
    assert "add `referrer:` or `invitee:`" in problem.message


def test_guest_seats_without_an_amount_are_reported_at_the_grant(
    folder, minimal_playbook
) -> None:
    """`grant: guest_seats` needs `amount:`; the problem is at the grant."""
    reward = (
        "reward:\n  earned_on: invitee_activated\n  referrer:\n    grant: guest_seats\n"
    )
    book = folder.playbook(minimal_playbook + reward)

    problem = the_problem(book, folder.load())

    assert book.at("grant: guest_seats") == problem.position
    assert "`guest_seats` needs `amount:`" in problem.message


# --- trigger conditions and activation --------------------------------------------


def test_an_event_condition_on_a_cohort_trigger_is_reported_at_its_key(
    folder, minimal_playbook
) -> None:
    """A cohort trigger has no event, so `event.pages` cannot be tested."""
    trigger = "  cohort: mixpanel:48213\n  where:\n    event.pages: 3\n"
    book = folder.playbook(
        minimal_playbook.replace("  event: report_shared\n", trigger)
    )

    problem = the_problem(book, folder.load())

    assert book.at("event.pages") == problem.position
    assert "a cohort trigger has no event" in problem.message


def test_no_activation_gate_anywhere_is_an_error(folder, minimal_playbook) -> None:
    """Neither the playbook nor the workspace gates on activation: refused."""
    folder.workspace(UNGATED_WORKSPACE)
    book = folder.playbook(minimal_playbook)

    catalog = folder.load()

    problem = the_problem(book, catalog)
    assert book.at("trigger:") == problem.position
    assert "no activation gate" in problem.message
    assert is_skipped(book, catalog)


def test_an_activation_gate_in_the_playbook_alone_is_enough(
    folder, minimal_playbook
) -> None:
    """With an ungated workspace, the playbook's own `activation:` lets it load."""
    folder.workspace(UNGATED_WORKSPACE)
    gate = "activation:\n  cohort: mixpanel:61002\n"
    book = folder.playbook(minimal_playbook + gate)

    catalog = folder.load()

    assert book.problems_in(catalog) == []
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]


def test_skipping_activation_is_a_warning_and_the_playbook_loads(
    folder, minimal_playbook
) -> None:
    """`activation: {skip: ...}` is allowed, with a warning at the reason."""
    folder.workspace(UNGATED_WORKSPACE)
    skip = "activation:\n  skip: the report is useful from the first minute\n"
    book = folder.playbook(minimal_playbook + skip)

    catalog = folder.load()

    problem = the_problem(book, catalog)
    assert problem.severity == Severity.WARNING
    assert book.at("the report is useful") == problem.position
    assert "asking before activation" in problem.message
    assert [entry.playbook.id for entry in catalog.playbooks] == ["welcome-loop"]


def test_skipping_activation_on_a_sign_up_trigger_is_an_error(
    folder, minimal_playbook
) -> None:
    """Asking at `signed_up` with no gate is refused, not merely warned."""
    folder.workspace(UNGATED_WORKSPACE)
    text = minimal_playbook.replace("report_shared", "signed_up")
    skip = "activation:\n  skip: we want invites from day one\n"
    book = folder.playbook(text + skip)

    catalog = folder.load()

    problem = the_problem(book, catalog)
    assert problem.severity == Severity.ERROR
    assert book.at("we want invites") == problem.position
    assert "sign-up (`signed_up`)" in problem.message
    assert is_skipped(book, catalog)


# --- holdout ----------------------------------------------------------------------


def test_a_holdout_of_zero_is_a_warning_and_the_playbook_loads(
    folder, minimal_playbook
) -> None:
    """0% holds nobody out: lift cannot be measured, but it is the author's call."""
    book = folder.playbook(minimal_playbook + "holdout: 0%\n")

    catalog = folder.load()

    problem = the_problem(book, catalog)
    assert problem.severity == Severity.WARNING
    assert book.at("0%") == problem.position
    assert "lift cannot be measured" in problem.message
    assert [entry.playbook.holdout for entry in catalog.playbooks] == [0.0]


# --- across playbooks -------------------------------------------------------------


def test_two_playbooks_on_one_trigger_with_one_priority_overlap(
    folder, minimal_playbook
) -> None:
    """The second file gets the overlap error at `trigger:`; both still load."""
    folder.playbook(minimal_playbook, "a-first.yaml")
    second = folder.playbook(
        minimal_playbook.replace("welcome-loop", "second-loop"), "b-second.yaml"
    )

    catalog = folder.load()

    problem = the_problem(second, catalog)
    assert second.at("trigger:") == problem.position
    assert "both fire on `event:report_shared` with priority 0" in problem.message
    loaded = sorted(entry.playbook.id for entry in catalog.playbooks)
    assert loaded == ["second-loop", "welcome-loop"]


def test_two_playbooks_on_one_trigger_with_different_priorities_do_not_overlap(
    folder, minimal_playbook
) -> None:
    """A `priority:` makes the order explicit, which is all the check asks for."""
    folder.playbook(minimal_playbook, "a-first.yaml")
    second = minimal_playbook.replace("welcome-loop", "second-loop")
    folder.playbook(second + "priority: 10\n", "b-second.yaml")

    catalog = folder.load()

    assert catalog.problems == []


def test_a_duplicate_id_skips_the_second_file(folder, minimal_playbook) -> None:
    """The first file by name keeps the id; the second is skipped at its `id:`."""
    folder.playbook(minimal_playbook, "a-first.yaml")
    second = folder.playbook(minimal_playbook.replace("report_shared", "x"), "b.yaml")

    catalog = folder.load()

    problem = the_problem(second, catalog)
    assert Position(1, 5) == second.at("welcome-loop") == problem.position
    assert "the id `welcome-loop` is taken" in problem.message
    assert [second.path] == catalog.skipped
    assert [entry.path.name for entry in catalog.playbooks] == ["a-first.yaml"]


# --- renamed keys -----------------------------------------------------------------


def test_a_renamed_key_loads_with_a_warning_naming_the_new_key(
    folder, minimal_playbook
) -> None:
    """`holdout_percent: 5%` still works, and says to write `holdout`."""
    book = folder.playbook(minimal_playbook + "holdout_percent: 5%\n")

    catalog = folder.load()

    problem = the_problem(book, catalog)
    assert problem.severity == Severity.WARNING
    assert book.at("holdout_percent") == problem.position
    assert "`holdout_percent` is now `holdout`" in problem.message
    assert [entry.playbook.holdout for entry in catalog.playbooks] == [5.0]


def test_a_renamed_key_given_with_its_new_name_is_an_error(
    folder, minimal_playbook
) -> None:
    """Both `holdout_percent` and `holdout`: which one was meant? Refused."""
    book = folder.playbook(minimal_playbook + "holdout_percent: 5%\nholdout: 8%\n")

    catalog = folder.load()

    renamed = [p for p in book.problems_in(catalog) if "both given" in p.message]
    assert [book.at("holdout_percent")] == [p.position for p in renamed]
    assert all(p.is_error for p in renamed)
    assert is_skipped(book, catalog)


# --- the acceptance test ------------------------------------------------------------

BROKEN_FIVE_WAYS = """\
id: broken-loop
description: A playbook with five mistakes, one per line.
owner: growth
ownr: growth-team
trigger:
  event: report_shared
  delay: 2 fortnights
nudge:
  channel: braze
  invite:
    share: workspace_invte
  trust: They will see the report you shared, and nothing else.
  message:
    body: |
      Hello {{ user.first_name }},
      Invite a colleague {{ user..id }} today.
      Thanks
"""


def test_a_playbook_broken_five_ways_gets_five_errors_on_five_lines(
    folder,
) -> None:
    """One pass shows every mistake: no error hides another, none is doubled."""
    # Given an unknown key, a bad duration, a channel without its reference,
    # a bad enum value and a Liquid syntax error, each on its own line
    book = folder.playbook(BROKEN_FIVE_WAYS)

    # When the folder is loaded
    catalog = folder.load()

    # Then there are exactly five errors, one at each of those lines
    errors = [p for p in book.problems_in(catalog) if p.is_error]
    needles = ["ownr", "2 fortnights", "braze", "workspace_invte", "..id"]
    assert len(errors) == 5, "\n".join(str(p) for p in errors)
    assert {4, 7, 9, 11, 16} == {p.position.line for p in errors}
    assert {book.at(needle) for needle in needles} == {p.position for p in errors}
    assert is_skipped(book, catalog)


def test_the_outbox_channel_is_a_warning_at_the_channel(
    folder, minimal_playbook, on_channel
) -> None:
    """`outbox` is for trying a playbook out: it loads, with a warning that
    `lint --strict` (the release check) turns into a failure."""
    book = folder.playbook(on_channel(minimal_playbook, "outbox"))

    catalog = folder.load()
    problem = the_problem(book, catalog)

    assert [p.playbook.id for p in catalog.playbooks] == ["welcome-loop"]
    assert problem.severity == Severity.WARNING
    assert problem.position == book.at("outbox")
    assert "not for production" in problem.message


def test_a_reference_for_a_channel_not_used_is_a_warning_at_its_key(
    folder, minimal_playbook
) -> None:
    """An `intercom:` block beside `channel: braze` and its `braze:` block is
    flagged where it is written, so that a stale block does not mislead."""
    text = minimal_playbook.replace(
        "  channel: intercom", "  channel: braze\n  braze: {campaign: c-1}"
    )
    book = folder.playbook(text)

    problem = the_problem(book, folder.load())

    assert problem.severity == Severity.WARNING
    assert problem.position == book.at("intercom:")
    assert "not the channel or a fallback" in problem.message
