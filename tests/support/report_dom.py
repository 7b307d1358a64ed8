"""What the report tests look for in a fleet report page (plugins/plugin_utils/_fleet_report.py), parsed with
the standard library's HTML parser: the wave and device rows, the charts, every element and attribute."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Dict, List, Optional, Set, Tuple

# Namespace names are identifiers, never fetched; the only http(s) text a report may hold.
NAMESPACES = {'http://www.w3.org/2000/svg', 'http://www.w3.org/1999/xlink', 'http://www.w3.org/1999/xhtml'}
URL = re.compile(r'(?:https?:)?//[^\s"\'<>()]+', re.IGNORECASE)


def web_addresses(text: str) -> Set[str]:
    """Every http://, https:// or protocol-relative // address in the text, less the namespace names."""
    found = {match.group(0) for match in URL.finditer(text)}
    return {address for address in found if address.startswith(('http', 'HTTP', '//'))} - NAMESPACES


class Chart:
    def __init__(self, chart_id: str):
        self.id = chart_id
        self.classes: Set[str] = set()
        self.texts: List[str] = []
        self.tags: List[str] = []


class ReportDom(HTMLParser):
    """devices / waves: data-device / data-wave -> {"attrs": the row's attributes, "cells": cell texts};
    charts: the id of each div.chart -> Chart; elements: (tag, attrs) of every element."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.devices: Dict[str, dict] = {}
        self.waves: Dict[str, dict] = {}
        self.charts: Dict[str, Chart] = {}
        self.elements: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.ids: Dict[str, str] = {}      # element id -> its text
        self._row: Optional[dict] = None
        self._cell: Optional[List[str]] = None
        self._chart: Optional[Chart] = None
        self._chart_depth = 0
        self._id_stack: List[Tuple[str, str, List[str]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        classes = set((attributes.get('class') or '').split())
        if tag == 'tr' and classes & {'device', 'wave'}:
            self._row = {'attrs': attributes, 'cells': []}
            table = self.devices if 'device' in classes else self.waves
            table[attributes.get('data-device') or attributes.get('data-wave')] = self._row
        elif tag == 'td' and self._row is not None:
            self._cell = []
        if self._chart is not None:
            self._chart_depth += 1
            self._chart.classes |= classes
            self._chart.tags.append(tag)
        elif tag == 'div' and 'chart' in classes:
            self._chart = self.charts.setdefault(attributes.get('id'), Chart(attributes.get('id')))
            self._chart_depth = 1
        if attributes.get('id') and tag in ('span', 'p', 'td'):
            self._id_stack.append((tag, attributes['id'], []))

    def handle_endtag(self, tag):
        if tag == 'td' and self._cell is not None and self._row is not None:
            self._row['cells'].append(' '.join(''.join(self._cell).split()))
            self._cell = None
        elif tag == 'tr':
            self._row = None
        if self._chart is not None:
            self._chart_depth -= 1
            if self._chart_depth == 0:
                self._chart = None
        if self._id_stack and self._id_stack[-1][0] == tag:
            _tag, element_id, text = self._id_stack.pop()
            self.ids[element_id] = ' '.join(''.join(text).split())

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._chart is not None and data.strip():
            self._chart.texts.append(data.strip())
        for _tag, _id, text in self._id_stack:
            text.append(data)
