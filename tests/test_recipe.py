"""Recipe validation: every bad input is refused with one sentence, before any weight is read."""
from __future__ import annotations

import pytest
import yaml

from core import methods as registry
from core import recipe as R
from core.errors import UserError
from core.methods.base import MethodSpec, Param

TA = """
merge_method: task_arithmetic
base_model: zoo:base
models:
  - model: zoo:safety
    task: safety
    parameters: {weight: 0.7}
  - model: zoo:math
    parameters: {weight: 1.0}
parameters: {lambda: 0.5}
dtype: bfloat16
"""


def _zero(base, deltas, mp, gp, ctx):
    return base * 0


@pytest.fixture
def toy(monkeypatch):
    """A method using every Param kind, alias and bound, registered only for this test."""
    spec = MethodSpec(
        "toy", "Toy", _zero, needs_base=True, min_models=2, max_models=3, mergekit_name="toy_mk",
        params=[Param("weight", 1.0, 0.0, 2.0, per_model=True),
                Param("mask_ratio", 0.5, 0.0, 1.0, per_model=True, mergekit="density"),
                Param("steps", 3, 1, 10, kind="int"),
                Param("normalize", True, kind="bool"),
                Param("election", "11", kind="choice", choices=("11", "10", "01")),
                Param("location", "snip", kind="str"),
                Param("ours_only", 0.25, 0.0, 1.0)])
    monkeypatch.setitem(registry.REGISTRY, "toy", spec)
    return spec


def toy_recipe(**over) -> R.Recipe:
    d = {"merge_method": "toy", "base_model": "zoo:base",
         "models": [{"model": "zoo:safety"}, {"model": "zoo:math"}]}
    d.update(over)
    return R.from_dict(d)


def refused(recipe: R.Recipe) -> str:
    with pytest.raises(UserError) as err:
        R.validate(recipe)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_a_good_recipe_passes_and_fills_defaults():
    r = R.loads(TA)
    checked = R.validate(r)
    per, glob = checked.model_params, checked.global_params
    assert per == [{"weight": 0.7}, {"weight": 1.0}]
    assert glob == {"lambda": 0.5}


def test_unknown_method_lists_the_known_ones():
    msg = refused(R.loads(TA.replace("task_arithmetic", "tie")))
    assert "Unknown merge method 'tie'" in msg and "task_arithmetic" in msg


def test_unknown_parameter_global_and_per_model_list_the_known():
    assert refused(R.loads(TA.replace("lambda: 0.5", "lamda: 0.5"))) == \
        "'lamda' in parameters is not a parameter of task_arithmetic; known: lambda, seed, weight."
    assert refused(R.loads(TA.replace("weight: 0.7", "wieght: 0.7"))) == \
        "'wieght' of 'zoo:safety' is not a parameter of task_arithmetic; known: weight."


def test_a_method_with_no_per_model_parameters_says_so():
    # slerp has none per model: the sentence used to end "known: ."
    rec = R.from_dict({"merge_method": "slerp", "base_model": "zoo:base",
                       "models": [{"model": "zoo:safety", "parameters": {"weight": 0.5}}], "parameters": {"t": 0.5}})
    assert refused(rec) == "'weight' of 'zoo:safety' is not a parameter of slerp; slerp takes no per-model parameters."


def test_global_parameter_under_a_model_is_pointed_to_the_right_place():
    msg = refused(R.loads(TA.replace("{weight: 0.7}", "{weight: 0.7, lambda: 2}")))
    assert msg == "'lambda' of 'zoo:safety' is a global parameter of task_arithmetic; put it under the recipe's parameters."


@pytest.mark.parametrize("value, sentence", [
    ("abc", "'lambda' in parameters must be a number, not 'abc'."),
    ("true", "'lambda' in parameters must be a number, not True."),
    ("[0.1, 0.2]", "'lambda' in parameters must be a number, not [0.1, 0.2]."),
    (".nan", "'lambda' in parameters must be a finite number, not nan."),
    ("2.5", "'lambda' in parameters is 2.5; it must be between 0 and 2."),
    ("-0.1", "'lambda' in parameters is -0.1; it must be between 0 and 2."),
    # YAML 1.1 reads 1e9 (no dot) as text: it is still judged as the number the user wrote
    ("1e9", "'lambda' in parameters is 1e+09; it must be between 0 and 2."),
    ("-2E-3", "'lambda' in parameters is -0.002; it must be between 0 and 2."),
])
def test_bad_numbers(value, sentence):
    assert refused(R.loads(TA.replace("lambda: 0.5", f"lambda: {value}"))) == sentence


def test_bounds_are_inclusive():
    R.validate(R.loads(TA.replace("lambda: 0.5", "lambda: 2").replace("weight: 0.7", "weight: 0")))


def test_kinds_bool_choice_int_str(toy):
    assert refused(toy_recipe(parameters={"normalize": "yes"})) == "'normalize' in parameters must be true or false, not 'yes'."
    assert refused(toy_recipe(parameters={"election": "12"})) == "'election' in parameters is '12'; use one of 11, 10, 01."
    assert refused(toy_recipe(parameters={"steps": 2.5})) == "'steps' in parameters must be a whole number, not 2.5."
    assert refused(toy_recipe(parameters={"steps": 0})) == "'steps' in parameters is 0; it must be between 1 and 10."
    assert refused(toy_recipe(parameters={"location": 3})) == "'location' in parameters must be text, not 3."
    # YAML reads an unquoted 11 as a number; it still means the choice "11"
    r = R.loads("merge_method: toy\nbase_model: zoo:base\nmodels: [zoo:safety, zoo:math]\n"
                "parameters: {election: 11, steps: 4.0}\n")
    glob = R.validate(r).global_params
    assert glob["election"] == "11" and glob["steps"] == 4 and isinstance(glob["steps"], int)


def test_mergekit_names_and_aliases(toy):
    # density is mergekit's name for mask_ratio here; int8_mask is accepted and ignored
    r = toy_recipe(models=[{"model": "zoo:safety", "parameters": {"density": 0.2}}, {"model": "zoo:math"}],
                   parameters={"int8_mask": True, "weight": 0.5})
    checked = R.validate(r)
    per, glob = checked.model_params, checked.global_params
    assert per == [{"weight": 0.5, "mask_ratio": 0.2}, {"weight": 0.5, "mask_ratio": 0.5}]
    assert "int8_mask" not in glob
    bad = toy_recipe(models=[{"model": "zoo:safety", "parameters": {"density": 0.2, "mask_ratio": 0.3}},
                             {"model": "zoo:math"}])
    assert "given twice" in refused(bad)
    assert "between 0 and 1" in refused(toy_recipe(parameters={"density": 1.5}))


def test_normalize_false_is_mergekits_plain_sum_but_true_is_refused():
    R.validate(R.loads(TA.replace("lambda: 0.5", "lambda: 0.5, normalize: false, int8_mask: true")))
    assert "'normalize' in parameters is not a parameter of task_arithmetic" in \
        refused(R.loads(TA.replace("lambda: 0.5", "lambda: 0.5, normalize: true")))


def test_seed_must_be_a_whole_number():
    R.validate(R.loads(TA.replace("lambda: 0.5", "lambda: 0.5, seed: 3")))
    assert refused(R.loads(TA.replace("lambda: 0.5", "seed: -1"))).startswith("'seed' in parameters must be a whole number")


def test_model_count_duplicates_base_and_dtype(toy):
    assert refused(R.from_dict({"merge_method": "task_arithmetic", "base_model": "zoo:base", "models": []})) == \
        "The recipe lists no models to merge."
    assert refused(R.from_dict({"merge_method": "task_arithmetic", "base_model": "zoo:base",
                                "models": ["zoo:base"]})) == "The recipe lists no models to merge besides the base."
    assert refused(toy_recipe(models=["zoo:safety"])) == "toy needs at least 2 models to merge, but the recipe has 1."
    assert refused(toy_recipe(models=["zoo:safety", "zoo:math", "zoo:code", "/tmp/x"])) == \
        "toy merges at most 3 models, but the recipe has 4."
    assert refused(toy_recipe(models=["zoo:safety", "zoo:safety"])) == \
        "'zoo:safety' is listed twice in models; each model may appear once."
    assert refused(toy_recipe(base_model=None)) == "toy needs a base_model: the task vectors are measured from it."
    assert refused(toy_recipe(dtype="float8")) == "dtype 'float8' is not supported; use one of float32, float16, bfloat16."


def test_base_listed_among_models_is_not_an_expert():
    r = R.from_dict({"merge_method": "task_arithmetic", "base_model": "zoo:base",
                     "models": ["zoo:base", "zoo:safety"]})
    R.validate(r)
    assert R.contributors(r) == [1]


def test_round_trip_yaml():
    r = R.loads(TA)
    again = R.loads(r.to_yaml())
    assert again == r
    assert R.loads(again.to_yaml()) == again


def test_mergekit_export_is_the_same_merge():
    r = R.loads(TA)
    mk = yaml.safe_load(R.to_mergekit_yaml(r))
    assert mk["merge_method"] == "task_arithmetic"
    assert mk["base_model"].endswith("assets/zoo/base")
    assert [m["parameters"] for m in mk["models"]] == [{"weight": 0.7}, {"weight": 1.0}]
    assert mk["parameters"] == {"lambda": 0.5} and mk["dtype"] == "bfloat16"
    back = R.loads(R.to_mergekit_yaml(r))
    a, b = R.validate(back), R.validate(r)
    assert (a.model_params, a.global_params) == (b.model_params, b.global_params)


def test_mergekit_export_maps_aliases_and_refuses_what_mergekit_lacks(toy, monkeypatch):
    r = toy_recipe(models=[{"model": "zoo:safety", "parameters": {"mask_ratio": 0.2}}, {"model": "zoo:math"}])
    mk = yaml.safe_load(R.to_mergekit_yaml(r))
    assert mk["merge_method"] == "toy_mk"
    assert mk["models"][0]["parameters"] == {"weight": 1.0, "density": 0.2}
    with pytest.raises(UserError, match="'ours_only' in parameters has no mergekit equivalent"):
        R.to_mergekit_yaml(toy_recipe(parameters={"ours_only": 0.5}))
    monkeypatch.setitem(registry.REGISTRY, "toy2", MethodSpec("toy2", "Toy 2", _zero))
    with pytest.raises(UserError, match="toy2 has no mergekit equivalent"):
        R.to_mergekit_yaml(R.from_dict({"merge_method": "toy2", "base_model": "a", "models": ["b"]}))


def test_a_number_yaml_reads_as_text_is_taken_as_the_number():
    rec = R.validate(R.loads(TA.replace("lambda: 0.5", "lambda: 5e-1")))
    assert rec.written_global["lambda"] == 0.5


# ---------------------------------------------------- rules between parameters (Param.used_when)
ACM_DENSITY = "ACM's density is used only when base_method is ties; set base_method: ties or leave density out."


def acm_recipe(base_method: str | None = None, density=None, shared=False, **glob) -> dict:
    experts = [{"model": "zoo:safety"}, {"model": "zoo:math"}]
    if density is not None and not shared:
        experts[1]["parameters"] = {"density": density}
    params = dict(glob)
    if base_method is not None:
        params["base_method"] = base_method
    if density is not None and shared:
        params["density"] = density
    return {"merge_method": "acm", "base_model": "zoo:base", "models": experts, "parameters": params}


@pytest.mark.parametrize("shared", [False, True], ids=["per-model", "under-parameters"])
def test_a_knob_the_settings_do_not_use_is_refused_at_validation(shared):
    # ACM-TA (the default base_method) does not trim: a density below 1 would change nothing
    assert refused(R.from_dict(acm_recipe(density=0.5, shared=shared))) == ACM_DENSITY
    assert refused(R.from_dict(acm_recipe("task_arithmetic", density=0.5, shared=shared))) == ACM_DENSITY
    # its default (1: no trim) is not a setting; with ties the same density is used
    R.validate(R.from_dict(acm_recipe("task_arithmetic", density=1.0, shared=shared)))
    checked = R.validate(R.from_dict(acm_recipe("ties", density=0.5, shared=shared)))
    assert [mp["density"] for mp in checked.model_params] == [0.5 if shared else 1.0, 0.5]
    sb = R.from_dict({"merge_method": "subspace_boosting", "base_model": "zoo:base",
                      "models": [{"model": "zoo:safety", "parameters": {"density": 0.3}}]})
    assert refused(sb) == ("Subspace Boosting's density is used only when base_method is ties; "
                           "set base_method: ties or leave density out.")


def test_the_rule_comes_from_the_registry_for_any_method(monkeypatch):
    spec = MethodSpec("toy3", "Toy three (test)", _zero, params=[
        Param("mode", "a", kind="choice", choices=("a", "b")),
        Param("sharp", 0.0, 0.0, 1.0, used_when=("mode", "b")),
        Param("keep", 1.0, 0.0, 1.0, per_model=True, used_when=("mode", "b"))])
    monkeypatch.setitem(registry.REGISTRY, "toy3", spec)

    def toy3(glob=None, per=None):
        return R.from_dict({"merge_method": "toy3", "base_model": "zoo:base",
                            "models": [{"model": "zoo:math", "parameters": per or {}}], "parameters": glob or {}})
    assert refused(toy3({"sharp": 0.5})) == \
        "Toy three's sharp is used only when mode is b; set mode: b or leave sharp out."
    assert refused(toy3(per={"keep": 0.2})) == \
        "Toy three's keep is used only when mode is b; set mode: b or leave keep out."
    R.validate(toy3({"sharp": 0.0}, {"keep": 1.0}))
    R.validate(toy3({"mode": "b", "sharp": 0.5}, {"keep": 0.2}))


def test_acm_clusters_are_checked_at_validation():
    assert refused(R.from_dict(acm_recipe(n_calibration=8, clusters=9))) == \
        "ACM's clusters (9) must not exceed n_calibration (8)."
    R.validate(R.from_dict(acm_recipe(n_calibration=8, clusters=8)))


def test_the_plan_refuses_before_any_model_is_read(monkeypatch):
    from core import service
    from core.merge import plan

    def no_inspect(ref):
        raise AssertionError(f"{ref} was inspected before the recipe was validated")
    monkeypatch.setattr(plan.M, "inspect", no_inspect)
    with pytest.raises(UserError) as err:
        service.plan(acm_recipe("task_arithmetic", density=0.5))
    assert str(err.value) == ACM_DENSITY


def test_the_command_line_prints_the_same_one_sentence(monkeypatch, tmp_path, cli):
    from core.merge import plan

    def no_inspect(ref):
        raise AssertionError(f"{ref} was inspected before the recipe was validated")
    monkeypatch.setattr(plan.M, "inspect", no_inspect)
    path = tmp_path / "acm.yaml"
    path.write_text(yaml.safe_dump(acm_recipe(density=0.5)))
    assert cli.refused(["merge", path, "--out", tmp_path / "out"]) == ACM_DENSITY
    assert not (tmp_path / "out").exists()
