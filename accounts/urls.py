from django.urls import path, re_path

from accounts import api

urlpatterns = [
    path("admin/users", api.UsersView.as_view()),
    path("admin/users/email/<str:email>", api.UserByEmailView.as_view()),
    path("admin/users/<int:user_id>", api.UserDetailView.as_view()),
    path("admin/users/<int:user_id>/tokens", api.UserTokensView.as_view()),
    path("admin/tokens/<int:token_id>", api.TokenDetailView.as_view()),
    re_path(r"^admin/(?:users|tokens)(?P<rest>/.*)?$", api.unknown_admin_path),
]
