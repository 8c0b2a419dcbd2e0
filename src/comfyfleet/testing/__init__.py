"""The offline world comfyfleet runs against: ``comfyfleet demo``'s as much as the tests'.

Nothing here is a mock of comfyfleet itself. It is the outside world, run locally and
faithful to the real one's documented behaviour (``/work/shared/reference/``):

- a model server on loopback that speaks Hugging Face's, Civitai's and a plain host's HTTP,
  with fault injection (statuses, stalls, rate limits, lying headers) for the tests;
- a stand-in ComfyUI (``standin/``: ComfyUI's startup and the API the provisioner checks,
  standard library only) and builders of local git repos for it and for custom nodes
  (``repos.py``), plus offline wheels so pip never goes online;
- the demo world (``demo_fixture.py``) that ties them together with a manifest and a
  workflow: ``comfyfleet demo``, the benchmarks and the test suite all build it the same way.

It ships in the package on purpose: the README's "run it" command needs it on a machine
without network, tokens or a GPU, and users' own scripts may use it to test their manifests.
"""
