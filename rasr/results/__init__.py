"""Results: the pages people open to see what a run did.

The results page of an enhance OUTPUT (`results_page`: OUTPUT/report/index.html, appended run by run;
its one template and script in `results_page_html`, what the next run needs to append in
`results_page_state`), the evaluation report of `rasr evaluate` (`evaluation_report`: report.html and
the paper's tables) and the HTML both share (`html`: styles, the before/after viewer, escaping).
Pages are views of finished work: nothing here decides what a run does.
"""
