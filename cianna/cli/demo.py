"""``cianna demo``: train and evaluate CIANNA's MNIST-example network on scikit-learn digits (offline)."""
from __future__ import annotations

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser("demo", help="train the MNIST-example CNN on scikit-learn digits (no download)",
                              description="Train CIANNA's MNIST-example network on scikit-learn's digits "
                              "(up-sampled to 28x28), print the test accuracy and write a training-curve PNG.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--iterations", type=int, default=20, help="training iterations (default: 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from cianna.demo import run_digits_demo

    if args.iterations < 1:
        raise ValueError(f"--iterations={args.iterations} must be >= 1")
    result = run_digits_demo(args.out, nb_iter=args.iterations, seed=args.seed, device=args.device,
                             silent=2 if args.quiet else 0)
    print(f"digits test accuracy: {100 * result.test_accuracy:.2f}% after {args.iterations} iterations "
          f"({result.seconds:.1f} s of training)")
    print(f"training curve: {result.curve_png}")
    print(f"model: {result.model_path}")
    return 0
