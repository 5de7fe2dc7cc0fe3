"""Bad input against the four services as processes, on a private slice of the real stack.

The cases are those of ``mess-dev bad-input`` (``mess.dev.bad_input``): the command runs them with many
more fuzzing examples and prints the table; here each must be answered as it should, with a bounded
number of fuzzing examples. One set of services serves the whole module (starting it and indexing the
seed tracks takes about 20 s).
"""

from collections.abc import Iterator

import pytest

from mess.dev import bad_input
from mess.dev.bad_input import HOSTILE_IDS, ID_ROUTES, UPLOAD_CASES, Services
from mess.dev.stack import private_stack
from mess.runtime.endpoints import StackSettings

# Per operation and generation mode (positive, negative): small enough for CI, large enough to have
# found every mismatch the command found with 100.
EXAMPLES = 15


@pytest.fixture(scope="module")
def services(backing: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with (
        private_stack(backing, "bi", 2) as stack,
        bad_input.running_services(stack, tmp_path_factory.mktemp("bad-input")) as running,
    ):
        yield running


@pytest.mark.parametrize("service", ["ingest", "query"])
def test_fuzzed_requests_get_no_5xx_and_answers_match_the_openapi_document(services: Services, service: str) -> None:
    report = bad_input.fuzz(services, service, EXAMPLES, seed=0)
    assert report.operations >= 5 and report.cases >= report.operations * EXAMPLES
    failures = "\n".join(report.failures)
    assert report.server_errors == 0, failures
    assert report.schema_mismatches == 0, failures
    # Found tracks were asked about too, not only ids that match nothing.
    if service == "query":
        assert report.statuses.get("200", 0) > 0


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=[case.name for case in UPLOAD_CASES])
async def test_bad_upload_is_answered_with_a_reason_and_leaves_nothing(
    services: Services, case: bad_input.UploadCase
) -> None:
    answer = await bad_input.try_upload(services, case)
    assert answer.ok, f"{answer.answer}: {answer.problems}"


@pytest.mark.parametrize("route", ID_ROUTES, ids=[f"{r.service}-{r.method}-{r.template}" for r in ID_ROUTES])
async def test_hostile_ids_get_404_or_422(services: Services, route: bad_input.IdRoute) -> None:
    answers = [await bad_input.try_id(services, route, name) for name in HOSTILE_IDS]
    wrong = [f"{a.case}: {a.answer} {a.problems}" for a in answers if not a.ok]
    assert not wrong, wrong


async def test_poison_on_every_consumed_topic_is_dead_lettered_and_the_partitions_move_on(
    services: Services,
) -> None:
    outcome = await bad_input.try_poison(services)
    topics = {answer.case.split(":")[0] for answer in outcome.answers}
    assert topics == set(bad_input.CONSUMERS)  # every consumed topic got poison
    wrong = [f"{a.what}: {a.answer} {a.problems}" for a in outcome.answers if not a.ok]
    assert not wrong, "\n".join(wrong)
    assert not outcome.problems, outcome.problems
    assert len(outcome.good_events) == 3
