import pytest

from modelkitfs.errors import InvalidReference
from modelkitfs.reference import parse_reference


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("registry.example/team/model:v1", "registry.example", "team/model", "v1", None),
        ("127.0.0.1:5000/kit", "127.0.0.1:5000", "kit", "latest", None),
        ("myorg/repo:1", "localhost", "myorg/repo", "1", None),
        ("repo", "localhost", "repo", "latest", None),
        ("r.io/a/b@sha256:" + "a" * 64, "r.io", "a/b", None, "sha256:" + "a" * 64),
        ("r.io/a/b:t@sha256:" + "b" * 64, "r.io", "a/b", "t", "sha256:" + "b" * 64),
    ],
)
def test_parses_like_kit(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.identifier == (digest or tag)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("r.io/Team/Model:v1", "invalid repository 'Team/Model'"),
        ("r.io/team/model:bad tag", "invalid tag"),
        ("r.io/team/model@sha256:xyz", "invalid digest"),
        ("", "invalid reference"),
        ("r.io/", "invalid repository"),
    ],
)
def test_rejects_with_the_reason(text: str, complaint: str) -> None:
    with pytest.raises(InvalidReference, match="REGISTRY/REPOSITORY") as caught:
        parse_reference(text)
    assert complaint in str(caught.value)
