from mlx_harmony_tui.cli import main

raise SystemExit(main())
