"""Few-shot in-context evaluation (`ltm fewshot`): task.py loads a task, prompt.py chooses the
demonstrations and builds each prompt, score.py normalises and scores answers, run.py runs it."""
from .run import CLEAN, PUBLISHED, FewshotResult, FewshotSettings, fewshot_run
from .task import Task, load_task

__all__ = ["CLEAN", "PUBLISHED", "FewshotResult", "FewshotSettings", "Task", "fewshot_run", "load_task"]
