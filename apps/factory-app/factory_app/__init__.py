"""The factory's federation check app: one ServerApp/ClientApp, a task per ML framework."""
