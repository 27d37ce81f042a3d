def pytest_addoption(parser):
    # Registered when tests/chaos is named on the command line (`pytest tests/chaos --chaos-count 500`).
    parser.addoption("--chaos-count", type=int, default=None,
                     help="number of meetings of the chaos suite (default 200)")
    parser.addoption("--chaos-seed", type=int, default=None, help="random seed of the chaos suite")
