"""SLURM host lists and task counts, expanded as `scontrol show hostnames` would."""
import pytest

from bigtrain.launch.hostlist import expand_hostlist, expand_tasks_per_node


@pytest.mark.parametrize("text, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,7]", ["node01", "node02", "node03", "node7"]),
    ("gpu[8-10],login", ["gpu8", "gpu9", "gpu10", "login"]),
    ("a[098-101]", ["a098", "a099", "a100", "a101"]),  # padding from the first bound
    ("r[1-2]n[3,5]", ["r1n3", "r1n5", "r2n3", "r2n5"]),  # several brackets: their product
    ("x[1-2]-ib,y", ["x1-ib", "x2-ib", "y"]),
])
def test_host_lists_expand(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text, why", [
    ("node[01-03", "not closed"),
    ("node[3-1]", "runs backwards"),
    ("node[a-b]", "cannot read 'a-b'"),
    ("node[1,[2]]", "nested"),
])
def test_bad_host_lists_are_named(text, why):
    with pytest.raises(ValueError, match=why):
        expand_hostlist(text)


def test_tasks_per_node_expand_and_refuse_garbage():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("8") == [8]
    with pytest.raises(ValueError, match="cannot read '2x3'"):
        expand_tasks_per_node("2x3")
