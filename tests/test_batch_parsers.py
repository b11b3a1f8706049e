"""The Grid Engine and Slurm parsers on real captured output (tests/data/batch,
from Son of Grid Engine 8.1.9 and Slurm 22.05 on Debian 12), and on garbage:
a parser never raises, it answers "unparseable" (or "no record")."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muppet.executor import gridengine as sge
from muppet.executor import slurm
from muppet.executor.batch_poller import CommandResult
from muppet.executor.batch_results import (
    BatchEnd,
    Phase,
    Unparseable,
    classify_submit_error,
    job_id_of,
    job_name,
)
from muppet.resources import (
    ResourceError,
    Resources,
    batch_setting,
    format_hms,
    merge_resources,
    parse_memory,
    parse_walltime,
)
from muppet.tomlcheck import Bad

DATA = Path(__file__).parent / "data" / "batch"


def data(name: str) -> str:
    return (DATA / name).read_text()


def result(rc: int | None, prefix: str, tool: str) -> CommandResult:
    return CommandResult((tool,), rc, data(f"{prefix}.out"), data(f"{prefix}.err"))


# --- Grid Engine -------------------------------------------------------------------


def test_qsub_terse_and_verbose_ids():
    assert sge.parse_qsub(result(0, "sge-qsub-ok", "qsub")).batch_id == "15"
    verbose = CommandResult(("qsub",), 0, data("sge-qsub-ok-noterse.out"), "")
    assert sge.parse_qsub(verbose).batch_id == "16"


@pytest.mark.parametrize(
    "prefix, words",
    [
        ("sge-qsub-unknown-queue", 'unknown queue "nosuch.q"'),
        ("sge-qsub-unknown-pe", 'parallel environment "nosuchpe" does not exist'),
        ("sge-qsub-unknown-resource", 'unknown resource "nosuchres"'),
    ],
)
def test_qsub_refusals_are_permanent_with_the_message(prefix, words):
    outcome = sge.parse_qsub(result(1, prefix, "qsub"))
    assert not outcome.ok and outcome.permanent
    assert words in outcome.error
    assert "Exiting." not in outcome.error


def test_qsub_with_qmaster_down_is_transient_and_surely_not_submitted():
    outcome = sge.parse_qsub(result(1, "sge-qsub-qmaster-down", "qsub"))
    assert not outcome.ok and not outcome.permanent
    assert not outcome.uncertain, "qsub could not send the job: nothing is queued"
    assert "unable to send message to qmaster" in outcome.error


def test_qsub_timeout_and_success_without_id_are_transient_and_maybe_submitted():
    timed_out = sge.parse_qsub(CommandResult(("qsub",), None, "", "qsub timed out after 30 s", timed_out=True))
    assert not timed_out.ok and not timed_out.permanent and "timed out" in timed_out.error
    assert timed_out.uncertain
    no_id = sge.parse_qsub(CommandResult(("qsub",), 0, "hello\n", ""))
    assert not no_id.ok and not no_id.permanent and no_id.uncertain
    no_answer = sge.parse_qsub(CommandResult(
        ("qsub",), 1, "", "error: failed receiving gdi request response for mid=1 (got syncron message receive "
        "timeout error).\n"
    ))
    assert not no_answer.permanent and no_answer.uncertain, "the qmaster got it but did not answer"
    missing = sge.parse_qsub(CommandResult(("qsub",), None, "", "cannot run qsub: [Errno 2] No such file"))
    assert not missing.permanent and not missing.uncertain


def test_qstat_xml_running_and_pending():
    jobs = sge.parse_qstat_xml(data("sge-qstat-running-pending.xml"))
    assert not isinstance(jobs, Unparseable)
    assert set(jobs) == {"4", "8", "15", "16", "10"}
    assert jobs["4"].name == "muppet-101" and jobs["4"].phase is Phase.RUNNING
    assert jobs["16"].state == "t" and jobs["16"].phase is Phase.RUNNING
    assert jobs["10"].state == "hqw" and jobs["10"].phase is Phase.PENDING


def test_qstat_xml_empty_pending_section():
    jobs = sge.parse_qstat_xml(data("sge-qstat-after.xml"))
    assert list(jobs) == ["8"]


@pytest.mark.parametrize(
    "state, phase",
    [("qw", Phase.PENDING), ("hqw", Phase.PENDING), ("Rq", Phase.PENDING), ("r", Phase.RUNNING),
     ("t", Phase.RUNNING), ("Rr", Phase.RUNNING), ("dr", Phase.RUNNING), ("s", Phase.RUNNING),
     ("Eqw", Phase.ERROR), ("?", Phase.PENDING)],
)
def test_sge_state_letters(state, phase):
    assert sge.sge_phase(state) is phase


def test_qstat_plain_text_and_qmaster_down_are_unparseable():
    assert isinstance(sge.parse_qstat_xml(data("sge-qstat-running-pending.txt")), Unparseable)
    assert isinstance(sge.parse_qstat_xml(data("sge-qstat-qmaster-down.err")), Unparseable)
    assert isinstance(sge.parse_qstat_xml(""), Unparseable)


def test_qstat_xml_entry_without_number_spoils_the_listing():
    text = data("sge-qstat-running-pending.xml").replace("<JB_job_number>8</JB_job_number>", "")
    assert isinstance(sge.parse_qstat_xml(text), Unparseable)


def test_qstat_error_state_and_its_reason():
    jobs = sge.parse_qstat_xml(data("sge-qstat-error-state.xml"))
    assert jobs["21"].phase is Phase.ERROR and jobs["21"].state == "Eqw"
    reason = sge.parse_error_reason(data("sge-qstat-j-error.txt"))
    assert "can't chdir to /nonexistent/dir" in reason
    assert sge.parse_error_reason(data("sge-qacct-exit0.txt")) == ""


def test_qacct_normal_exits():
    end = sge.parse_qacct(data("sge-qacct-exit0.txt"), "15", "muppet-109")
    assert end == BatchEnd("15", "muppet-109", 0, None, "", "vm", "failed 0")
    end = sge.parse_qacct(data("sge-qacct-exit5.txt"), "11")
    assert end.exit_code == 5 and not end.killed
    end = sge.parse_qacct(data("sge-qacct-h_vmem-memoryerror.txt"), "17")
    assert end.exit_code == 1 and not end.killed  # the job's own MemoryError


def test_qacct_limit_and_qdel_are_kills_with_reason():
    end = sge.parse_qacct(data("sge-qacct-h_rt-killed.txt"), "7", "muppet-104")
    assert end.signal == 9 and end.exit_code is None
    assert "h_rt" in end.killed and "failed 37" in end.killed
    end = sge.parse_qacct(data("sge-qacct-qdel-running.txt"), "4")
    assert end.signal == 9 and "qdel" in end.killed and "failed 100" in end.killed


def test_qacct_not_found_and_wrong_name():
    assert sge.parse_qacct(data("sge-qacct-not-found.txt"), "10") is None
    assert sge.parse_qacct(data("sge-qacct-exit0.txt"), "15", "muppet-999") is None


def test_qacct_reused_id_takes_the_record_with_the_name():
    # qmaster killed with -9 handed out job number 20 twice (captured here)
    text = data("sge-qacct-reused-id.txt")
    first = sge.parse_qacct(text, "20", "muppet-501")
    second = sge.parse_qacct(text, "20", "muppet-502")
    assert (first.exit_code, second.exit_code) == (4, 0)
    assert sge.parse_qacct(text, "20").name == "muppet-502"  # no name: the newest


# --- Slurm --------------------------------------------------------------------------


def test_sbatch_parsable_id():
    assert slurm.parse_sbatch(result(0, "slurm-sbatch-ok", "sbatch")).batch_id == "4"
    with_cluster = CommandResult(("sbatch",), 0, "1234;muppet\n", "")
    assert slurm.parse_sbatch(with_cluster).batch_id == "1234"


@pytest.mark.parametrize(
    "prefix, words",
    [
        ("slurm-sbatch-unknown-partition", "invalid partition specified: nosuch"),
        ("slurm-sbatch-too-much-mem", "Memory specification can not be satisfied"),
        ("slurm-sbatch-bad-option", "unrecognized option '--bogus'"),
    ],
)
def test_sbatch_refusals_are_permanent(prefix, words):
    outcome = slurm.parse_sbatch(result(1, prefix, "sbatch"))
    assert not outcome.ok and outcome.permanent and words in outcome.error


def test_sbatch_with_controller_down_is_transient_and_surely_not_submitted():
    outcome = slurm.parse_sbatch(result(1, "slurm-sbatch-controller-down", "sbatch"))
    assert not outcome.ok and not outcome.permanent and not outcome.uncertain
    assert "Unable to contact slurm controller" in outcome.error


def test_sbatch_without_an_answer_may_have_submitted():
    no_answer = slurm.parse_sbatch(CommandResult(
        ("sbatch",), 1, "", "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
    ))
    assert not no_answer.permanent and no_answer.uncertain
    killed = slurm.parse_sbatch(CommandResult(("sbatch",), None, "", "sbatch timed out after 60 s", timed_out=True))
    assert not killed.permanent and killed.uncertain
    no_id = slurm.parse_sbatch(CommandResult(("sbatch",), 0, "Submitted\n", ""))
    assert no_id.uncertain


def test_squeue_all_states():
    jobs = slurm.parse_squeue(data("slurm-squeue-mixed.txt"))
    assert not isinstance(jobs, Unparseable)
    assert jobs["13"].phase is Phase.RUNNING and jobs["13"].name == "muppet-601"
    assert jobs["14"].phase is Phase.PENDING and jobs["14"].reason == "JobHeldUser"
    assert jobs["15"].phase is Phase.DONE and jobs["15"].state == "FAILED"
    assert jobs["16"].name == "odd|name" and jobs["16"].reason == "Resources"
    done = slurm.parse_squeue(data("slurm-squeue-finished.txt"))
    assert done["6"].state == "TIMEOUT" and done["6"].phase is Phase.DONE
    assert done["11"].state == "COMPLETED"


def test_squeue_empty_is_no_jobs_and_errors_are_unparseable():
    assert slurm.parse_squeue("") == {}
    assert isinstance(slurm.parse_squeue(data("slurm-squeue-controller-down.err")), Unparseable)
    assert isinstance(slurm.parse_squeue("12|RUNNING|None\n"), Unparseable)


def test_squeue_name_may_hold_the_separator():
    jobs = slurm.parse_squeue("12|RUNNING|None|a|b\n")
    assert jobs["12"].name == "a|b"


@pytest.mark.parametrize(
    "state, phase",
    [("PENDING", Phase.PENDING), ("RUNNING", Phase.RUNNING), ("COMPLETING", Phase.RUNNING),
     ("CANCELLED by 0", Phase.DONE), ("OUT_OF_MEMORY", Phase.DONE), ("NEW_STATE_2030", Phase.PENDING),
     ("", Phase.PENDING)],
)
def test_slurm_states(state, phase):
    assert slurm.slurm_phase(state) is phase


def test_scontrol_exit_code_and_kills():
    end = slurm.parse_scontrol_end(data("slurm-scontrol-show-job-exit5.txt"), "8", "muppet-207")
    assert (end.exit_code, end.signal, end.killed, end.host) == (5, None, "", "vm")
    end = slurm.parse_scontrol_end(data("slurm-scontrol-show-job-timeout.txt"), "6")
    assert end.signal == 15 and "wall-clock" in end.killed and "TimeLimit" in end.killed
    end = slurm.parse_scontrol_end(data("slurm-scontrol-show-job-cancelled-running.txt"), "4")
    assert "cancelled" in end.killed
    end = slurm.parse_scontrol_end(data("slurm-scontrol-show-job-cancelled-pending.txt"), "7")
    assert "cancelled" in end.killed and end.host == ""


def test_scontrol_running_unknown_and_wrong_name_are_no_end():
    assert slurm.parse_scontrol_end(data("slurm-scontrol-show-job-running.txt"), "4") is None
    assert slurm.parse_scontrol_end(data("slurm-scontrol-show-job-unknown.txt"), "99999") is None
    assert slurm.parse_scontrol_end(data("slurm-scontrol-show-job-exit5.txt"), "8", "muppet-1") is None


def test_scontrol_one_line_listing_of_all_jobs():
    jobs = slurm.parse_scontrol_jobs(data("slurm-scontrol-oneliner-all.txt"))
    assert len(jobs) == 11
    by_id = {j["JobId"]: j for j in jobs}
    assert by_id["6"]["JobState"] == "TIMEOUT" and by_id["6"]["Command"] == "/tmp/cap/j.sh 120 0"


def test_jobcomp_log():
    text = data("slurm-jobcomp.log")
    assert slurm.parse_jobcomp(text, "8", "muppet-207").exit_code == 5
    assert "wall-clock" in slurm.parse_jobcomp(text, "6").killed
    assert "cancelled" in slurm.parse_jobcomp(text, "4").killed
    assert slurm.parse_jobcomp(text, "11").exit_code == 0
    assert slurm.parse_jobcomp(text, "8", "muppet-1") is None
    assert slurm.parse_jobcomp(text, "424242") is None


def test_jobcomp_location_from_the_config():
    assert slurm.parse_jobcomp_location(data("slurm-scontrol-show-config.txt")) == "/var/log/slurm/jobcomp.log"
    assert slurm.parse_jobcomp_location("JobCompType = jobcomp/none\n") is None
    assert slurm.parse_jobcomp_location("") is None


# --- garbage never raises -------------------------------------------------------------

PARSERS = [
    lambda t: sge.parse_qstat_xml(t),
    lambda t: sge.parse_qacct(t, "1", "muppet-1"),
    lambda t: sge.parse_qacct(t, "1"),
    lambda t: sge.parse_qsub(CommandResult(("qsub",), 0, t, "")),
    lambda t: sge.parse_qsub(CommandResult(("qsub",), 1, "", t)),
    lambda t: slurm.parse_squeue(t),
    lambda t: slurm.parse_scontrol_jobs(t),
    lambda t: slurm.parse_scontrol_end(t, "1", "muppet-1"),
    lambda t: slurm.parse_jobcomp(t, "1"),
    lambda t: slurm.parse_sbatch(CommandResult(("sbatch",), 0, t, "")),
    lambda t: slurm.parse_jobcomp_location(t),
    lambda t: sge.parse_error_reason(t),
]

GARBAGE = [
    "", "\n\n", "\x00\xff", "<job_info>", "<job_info><job_list></job_list></job_info>",
    "<?xml version='1.0'?><job_info><queue_info><job_list><JB_job_number>x</JB_job_number>",
    "=====\nexit_status\n", "=====\nexit_status  abc\njobnumber 1\n", "JobId=", "JobId=1 JobState=",
    "JobId=1 JobState=FAILED ExitCode=x:y", "JobId=1 JobState=TIMEOUT ExitCode=", "||||", "1|",
    "error: commlib error", "Segmentation fault", "ExitCode=3:0\nJobId=\n",
]


@pytest.mark.parametrize("text", GARBAGE)
@pytest.mark.parametrize("parse", range(len(PARSERS)))
def test_garbage_gives_no_exception(parse, text):
    PARSERS[parse](text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789|=:<>/ \nJobIdStatexit_sqwrE-muppet")), max_size=200))
def test_random_text_gives_no_exception(text):
    for parse in PARSERS:
        parse(text)


def test_garbage_listings_are_unparseable_not_empty():
    # an empty dict would mean "every job finished": garbage must not say that
    for text in ["Segmentation fault", "<job_info", "1|"]:
        assert isinstance(sge.parse_qstat_xml(text), Unparseable)
    for text in ["Segmentation fault", "1|", "abc|RUNNING|None|x"]:
        assert isinstance(slurm.parse_squeue(text), Unparseable)


# --- the shared pieces -------------------------------------------------------------------


def test_submit_error_classification():
    assert classify_submit_error('Unable to run job: Job was rejected because job requests unknown queue "x"')
    assert not classify_submit_error(
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
    )
    assert not classify_submit_error("something nobody has seen before")


def test_job_names():
    assert job_name(42) == "muppet-42"
    assert job_id_of("muppet-42") == 42
    assert job_id_of("muppet-4x") is None and job_id_of("other") is None


def test_resources_merge_step_over_executor():
    merged = merge_resources(
        {"queue": "all.q", "slots": 2, "memory": "1G", "walltime": "1:00:00",
         "submit_options": ["-P", "x"], "poll_interval": 1.0, "max_jobs": 3},
        {"cpus": 4, "walltime": 90, "submit_options": ["-l", "y=1"]},
        where="pipeline p, step s",
    )
    assert merged == Resources(
        queue="all.q", cpus=4, memory=1024**3, walltime=90, submit_options=("-P", "x", "-l", "y=1")
    )


@pytest.mark.parametrize(
    "step, words",
    [
        ({"memory": "lots"}, "'memory'"),
        ({"cpus": 0}, "'cpus'"),
        ({"walltime": "1:xx"}, "'walltime'"),
        ({"submit_options": "-q x"}, "'submit_options'"),
        ({"colour": "red"}, "'colour' is unknown"),
        ({"poll_interval": 3}, "only be set on the executor"),
    ],
)
def test_bad_resources_name_the_step_and_key(step, words):
    with pytest.raises(ResourceError) as caught:
        merge_resources({}, step, where="pipeline p, step s")
    assert "pipeline p, step s" in str(caught.value) and words in str(caught.value)


def test_sizes_and_times():
    assert parse_memory("512M") == 512 * 1024**2
    assert parse_memory("1.5GiB") == int(1.5 * 1024**3)
    assert parse_memory("4gb") == parse_memory(" 4 G ") == 4 * 1024**3
    assert parse_memory("1T") == 1024**4 and parse_memory("64k") == 64 * 1024
    assert parse_memory(1000) == 1000 * 1024**2  # megabytes, as in the configuration reference
    assert parse_memory("300") == 300 * 1024**2
    assert parse_walltime("2:03:04") == 7384
    assert parse_walltime("1-00:00:01") == 86401
    assert parse_walltime("1-12") == 86400 + 12 * 3600
    assert parse_walltime("2-01:30") == 2 * 86400 + 3600 + 1800
    assert parse_walltime("05:00") == 300
    assert parse_walltime(3600) == 3600
    assert format_hms(86400 + 3661) == "25:01:01" and format_hms(59) == "0:00:59"


@pytest.mark.parametrize(
    "value, words",
    [
        ("lots", ('a size such as "4G"', 'got "lots"')),
        ("4B", ("a size",)),  # bytes, or megabytes? neither: refused
        ("4 X", ("a size",)),
        ("-1G", ("a size",)),
        ("", ("a string or an integer >= 1",)),
        ("0G", ("at least one byte",)),
        (0, ("a string or an integer >= 1", "got 0")),
        (1.5, ("a string or an integer >= 1", "got 1.5")),
        (True, ("a string or an integer >= 1", "got true")),
        (["4G"], ("a string or an integer >= 1",)),
    ],
)
def test_bad_memory(value, words):
    with pytest.raises(Bad) as caught:
        parse_memory(value)
    assert all(w in str(caught.value) for w in words), str(caught.value)


@pytest.mark.parametrize(
    "value, words",
    [
        ("90", ("minutes to Slurm and seconds to Grid Engine", 'write 90 for seconds or "1:30:00" for minutes')),
        ("1h", ('"H:MM:SS"', 'got "1h"')),
        ("1:xx", ('"H:MM:SS"',)),
        ("1:2:3:4", ('"H:MM:SS"',)),
        ("x-1:00", ('"D-HH[:MM[:SS]]"',)),
        ("1-", ('"H:MM:SS"',)),
        ("0:00:00", ("at least one second",)),
        (0, ("a string or an integer >= 1", "got 0")),
        (2.5, ("a string or an integer >= 1", "got 2.5")),
        (False, ("a string or an integer >= 1",)),
    ],
)
def test_bad_walltime(value, words):
    with pytest.raises(Bad) as caught:
        parse_walltime(value)
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_batch_settings():
    assert batch_setting({}, "poll_interval", 5.0, where="[executors.c]") == 5.0
    assert batch_setting({"poll_interval": 2}, "poll_interval", 5.0, where="[executors.c]") == 2.0
    with pytest.raises(ResourceError, match=r"\[executors.c\]: 'submit_timeout': must be a number > 0"):
        batch_setting({"submit_timeout": 0}, "submit_timeout", 60.0, where="[executors.c]")


def test_bad_executor_resources_name_the_executor():
    with pytest.raises(ResourceError) as caught:
        merge_resources({"walltime": "1h"}, {}, where="[executors.cluster]")
    assert str(caught.value).startswith("[executors.cluster]: executor resource 'walltime': must be \"H:MM:SS\"")
