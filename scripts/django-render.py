#!/usr/bin/env python3
"""Renders the template corpus with Django itself, as the original renders client templates
(mailing/services/transactional_rendering.py: Template(value).render(Context(context,
autoescape=False)), settings TIME_ZONE=UTC, USE_TZ=True, LANGUAGE_CODE=en-us, USE_I18N=True).

Reads a corpus JSON file ({"context": default, "cases": [{"name", "template", "context"?,
"autoescape"?}]}; a case without a context uses the default) and prints a JSON object:
name -> {"output": str} or {"error": "<exception class>"}. Run by core/tests/django_corpus.rs
with the python of scripts/django-env.sh.
"""
import json
import sys

import django
from django.conf import settings

settings.configure(
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": False}],
    TIME_ZONE="UTC",
    USE_TZ=True,
    LANGUAGE_CODE="en-us",
    USE_I18N=True,
    INSTALLED_APPS=[],
)
django.setup()

from django.template import Context, Template  # noqa: E402


def render(case, default_context):
    try:
        template = Template(case["template"])
        context = Context(case.get("context", default_context), autoescape=case.get("autoescape", False))
        return {"output": template.render(context)}
    except Exception as exc:  # the test only compares that both sides refuse
        return {"error": type(exc).__name__}


with open(sys.argv[1], encoding="utf-8") as f:
    corpus = json.load(f)
print(json.dumps({case["name"]: render(case, corpus["context"]) for case in corpus["cases"]}, ensure_ascii=False))
