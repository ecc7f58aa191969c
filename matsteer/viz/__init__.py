"""Stage 7, figures: plots and the figure builders for saved results (no model passes).

Modules: ``style`` (the shared look, ``save_figure``), ``plots`` (activations, gates, training curves), ``charts``
(bars and curves of scores), ``tables`` (table figures), ``figures`` (figures of saved reports and ablations).
"""
