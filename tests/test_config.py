import pytest

from eden_lib.config import SECTIONS, ConfigError, load_params
from eden_lib.methods import METHODS, MethodConfigError


@pytest.mark.parametrize("profile", ["synthetic", "smoke", "extended", "paper"])
def test_every_profile_resolves(profile):
    cfg = load_params(profile=profile)
    assert cfg["profile"] == profile
    assert "profiles" not in cfg
    assert set(SECTIONS) <= set(cfg)


def test_profile_overrides_are_merged_deeply():
    base = load_params(profile="synthetic")
    smoke = load_params(profile="smoke")
    assert smoke["data"]["cxr"]["n_patients"] < base["data"]["cxr"]["n_patients"]
    assert smoke["data"]["cxr"]["render_size"] == base["data"]["cxr"]["render_size"]  # untouched sibling kept
    assert base["methods"]["models_genesis"]["batch_size"] == 16  # synthetic override of the paper's 6


def test_dotted_overrides_apply_last():
    cfg = load_params(profile="smoke", overrides={"transfer.seeds": [7], "data.cxr.sex_effect": 0.0})
    assert cfg["transfer"]["seeds"] == [7]
    assert cfg["data"]["cxr"]["sex_effect"] == 0.0


def test_unknown_key_names_key_value_and_allowed(raw_params, write_params):
    raw_params["profiles"]["smoke"]["transfer"]["seedz"] = [1]
    with pytest.raises(ConfigError, match=r"transfer\.seedz.*\[1\].*allowed keys here: .*seeds"):
        load_params(write_params(raw_params), profile="smoke")


def test_wrong_kind_is_an_error(raw_params, write_params):
    raw_params["transfer"]["seeds"] = "0,1,2"
    with pytest.raises(ConfigError, match=r"transfer\.seeds.*'0,1,2'.*list"):
        load_params(write_params(raw_params))


def test_bad_value_names_what_is_allowed():
    with pytest.raises(ConfigError, match=r"pretrain\.device.*'tpu'.*'auto', 'cpu' or 'cuda'"):
        load_params(overrides={"pretrain.device": "tpu"})
    with pytest.raises(ConfigError, match=r"label_fractions.*1\.5"):
        load_params(overrides={"transfer.label_fractions": [0.1, 1.5]})
    with pytest.raises(ConfigError, match=r"cxr_segmentation\.shots.*\[3, 0\].*positive integers"):
        load_params(overrides={"tasks.cxr_segmentation.shots": [3, 0]})


def test_unknown_profile_and_method(raw_params, write_params):
    with pytest.raises(ConfigError, match="profile 'tiny' is not defined"):
        load_params(profile="tiny")
    raw_params["active_methods"] = ["scratch", "simclr"]
    with pytest.raises(ConfigError, match=r"simclr"):
        load_params(write_params(raw_params))


def test_profile_must_declare_every_section(raw_params, write_params):
    del raw_params["profiles"]["smoke"]["bias"]
    with pytest.raises(ConfigError, match=r"profile 'smoke'.*missing \['bias'\]"):
        load_params(write_params(raw_params))


def test_profile_must_give_every_active_method_a_block(raw_params, write_params):
    del raw_params["profiles"]["paper"]["methods"]["dino"]
    with pytest.raises(ConfigError, match=r"profile 'paper' must give every active method.*missing \['dino'\]"):
        load_params(write_params(raw_params), profile="synthetic")


def test_method_block_is_validated_by_its_method(raw_params, write_params):
    raw_params["methods"]["models_genesis"]["temperature"] = 0.2
    with pytest.raises(MethodConfigError, match=r"models_genesis: unknown keys \['temperature'\]"):
        load_params(write_params(raw_params))
    with pytest.raises(MethodConfigError, match=r"models_genesis: .*flip_axes.*'diagonal'"):
        load_params(overrides={"methods.models_genesis.flip_axes": "diagonal"})
    with pytest.raises(MethodConfigError, match=r"models_genesis\.optimizer = 'lbfgs'; allowed: 'sgd', 'adam'"):
        load_params(overrides={"methods.models_genesis.optimizer": "lbfgs"})


def test_registry_and_params_use_one_vocabulary(raw_params):
    assert set(raw_params["methods"]) == set(METHODS)
    assert set(raw_params["active_methods"]) <= set(METHODS)
